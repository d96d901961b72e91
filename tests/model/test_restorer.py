"""Restorer: model directory round trip, any-input handling, seamless chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from miipher2.model.chunking import plan_chunks
from miipher2.model.restorer import Restorer
from tests.model.conftest import TINY_FEATURE_LAYER


def _restorer(directory, preset="w2v-bert-2.0", sample_rate=24000, seed=0) -> Restorer:
    torch.manual_seed(seed)
    restorer = Restorer.build(str(directory), preset, feature_layer=TINY_FEATURE_LAYER, adapter_dim=16,
                              sample_rate=sample_rate, vocoder_size="tiny")
    with torch.no_grad():  # stand-in for training: adapters that change the features
        for parameter in restorer.cleaner.adapter_parameters():
            parameter.normal_(std=0.05)
    return restorer.eval()


def test_save_load_round_trip_gives_identical_output(tiny_backbone, tmp_path, speechlike):
    restorer = _restorer(tiny_backbone("w2v-bert-2.0"))
    wave = speechlike(1.3)
    before, rate = restorer.restore(wave, 16000)
    restorer.save_pretrained(tmp_path / "model")
    restorer.save_pretrained(tmp_path / "model")  # overwriting an existing directory works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or backup dirs left
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["adapters.safetensors", "backbone", "config.yaml",
                                                                      "vocoder.safetensors"]
    loaded = Restorer.from_pretrained(tmp_path / "model", device="cpu")
    assert loaded.vocoder.weight_norm_folded  # baked for inference
    after, loaded_rate = loaded.restore(wave, 16000)
    assert rate == loaded_rate == 24000
    np.testing.assert_allclose(before, after, atol=1e-6)
    assert loaded.config_dict() == restorer.config_dict()
    # A model loaded for inference saves back to the training (weight-norm) form.
    loaded.save_pretrained(tmp_path / "again")
    again, _ = Restorer.from_pretrained(tmp_path / "again").restore(wave, 16000)
    np.testing.assert_allclose(again, after, atol=1e-6)


def test_output_length_and_rate_for_stereo_44k_input(tiny_backbone, speechlike):
    restorer = _restorer(tiny_backbone("mhubert-147"), "mhubert-147", sample_rate=16000)
    stereo = np.stack([speechlike(2.0, 44100), 0.5 * speechlike(2.0, 44100)], axis=1)
    (out, rate), (mono_out, _) = restorer.restore_batch([stereo, stereo.mean(axis=1)], [44100, 44100])
    assert rate == 16000 and out.shape == (32000,) and out.dtype == np.float32
    np.testing.assert_allclose(out, mono_out, atol=1e-6)  # stereo is downmixed
    assert np.abs(out).max() > 0


def test_bad_inputs_and_directories_are_named(tiny_backbone, tmp_path):
    restorer = _restorer(tiny_backbone("w2v-bert-2.0"))
    with pytest.raises(ValueError, match="input 0: wave contains NaN"):
        restorer.restore(np.full(1600, np.nan, np.float32), 16000)
    with pytest.raises(ValueError, match="input 0: expected a non-empty"):
        restorer.restore(np.zeros(0, np.float32), 16000)
    with pytest.raises(FileNotFoundError, match="not a Miipher-2 model directory"):
        Restorer.from_pretrained(tmp_path)
    restorer.save_pretrained(tmp_path / "m")
    config = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    config["backbone"]["adapter_dim"] = 8
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="weights do not load"):
        Restorer.from_pretrained(tmp_path / "m")
    del config["backbone"]["preset"]
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="backbone.preset is missing"):
        Restorer.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("preset", ["mhubert-147", "usm"])
def test_a_file_restores_the_same_whatever_it_is_batched_with(tiny_backbone, preset, speechlike):
    """The cleaner masks padding and the vocoder never sees any: batched output == solo output."""
    restorer = _restorer(tiny_backbone(preset), preset)
    waves = [speechlike(1.0), speechlike(0.45), speechlike(0.7)[::-1].copy()]
    batched = restorer.restore_batch(waves, [16000] * 3)
    for wave, (out, rate) in zip(waves, batched):
        solo, _ = restorer.restore(wave, 16000)
        assert out.shape == solo.shape
        np.testing.assert_allclose(out, solo, atol=1e-5 * float(np.abs(solo).max()))


def test_a_copied_model_directory_restores_without_the_original_backbone(tiny_backbone, tmp_path, speechlike):
    """A model trained on a local encoder directory carries that encoder: portable to another machine."""
    import shutil

    from miipher2.cli import main

    backbone = tmp_path / "training-machine" / "backbone"
    shutil.copytree(tiny_backbone("mhubert-147"), backbone)
    restorer = _restorer(backbone, "mhubert-147")
    wave = speechlike(0.8)
    expected, _ = restorer.restore(wave, 16000)
    restorer.save_pretrained(tmp_path / "training-machine" / "model")
    shutil.copytree(tmp_path / "training-machine" / "model", tmp_path / "elsewhere" / "model")
    shutil.rmtree(tmp_path / "training-machine")

    config = yaml.safe_load((tmp_path / "elsewhere" / "model" / "config.yaml").read_text())
    assert config["backbone"]["bundled"] == "backbone" and config["backbone"]["source"] == str(backbone)
    loaded = Restorer.from_pretrained(tmp_path / "elsewhere" / "model", device="cpu")
    np.testing.assert_allclose(loaded.restore(wave, 16000)[0], expected, atol=1e-6)
    loaded.save_pretrained(tmp_path / "resaved")  # re-saving bundles the encoder again
    assert (tmp_path / "resaved" / "backbone" / "model.safetensors").is_file()

    import soundfile as sf

    sf.write(tmp_path / "in.wav", wave, 16000)
    assert main(["restore", str(tmp_path / "in.wav"), "-o", str(tmp_path / "out"), "--model",
                 str(tmp_path / "elsewhere" / "model")]) == 0
    np.testing.assert_allclose(sf.read(tmp_path / "out" / "in.wav")[0], expected, atol=1e-4)  # 16-bit file


def test_adapters_refuse_other_encoder_weights_unless_asked(tiny_backbone, tmp_path, speechlike):
    from miipher2.model.random_backbone import save_random_backbone
    from miipher2.model.restorer import BackboneMismatchError

    _restorer(tiny_backbone("mhubert-147"), "mhubert-147").save_pretrained(tmp_path / "model")
    recorded = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())["backbone"]["fingerprint"]
    assert len(recorded) == 64
    other = save_random_backbone(tmp_path / "other", "mhubert-147", size="tiny", seed=1)  # same architecture
    with pytest.raises(BackboneMismatchError, match=rf"model: its adapters were trained on encoder weights with "
                                                    rf"fingerprint {recorded[:16]}…, but {other} holds"):
        Restorer.from_pretrained(tmp_path / "model", backbone_source=str(other))
    with pytest.warns(UserWarning, match="loading anyway as asked"):
        loaded = Restorer.from_pretrained(tmp_path / "model", backbone_source=str(other), allow_other_backbone=True)
    assert np.isfinite(loaded.restore(speechlike(0.3), 16000)[0]).all()

    # Bundled weights that were changed after export are caught the same way.
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "model" / "backbone" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.startswith("encoder.layers.0."))
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, weights)
    with pytest.raises(BackboneMismatchError):
        Restorer.from_pretrained(tmp_path / "model")


def _local_rms(a, b, centres, half):
    return max(float(np.sqrt(np.mean((a[c - half : c + half] - b[c - half : c + half]) ** 2))) for c in centres)


def test_chunked_restore_of_a_minute_matches_unchunked_without_seams(tiny_backbone, speechlike):
    restorer = _restorer(tiny_backbone("w2v-bert-2.0"), sample_rate=16000)
    wave = speechlike(60.0)
    restorer.chunk_seconds = 1000.0
    whole, _ = restorer.restore(wave, 16000)
    restorer.chunk_seconds, restorer.overlap_seconds = 10.0, 1.0
    chunked, _ = restorer.restore(wave, 16000)
    restorer.overlap_seconds = 0.0
    cut, _ = restorer.restore(wave, 16000)  # control: butt-joined chunks

    assert chunked.shape == whole.shape == cut.shape == (len(wave),)
    scale = float(np.sqrt(np.mean(whole**2)))
    assert np.sqrt(np.mean((chunked - whole) ** 2)) < 0.05 * scale

    half = 1600  # 0.1 s either side of a chunk boundary
    cuts = [c.start for c in plan_chunks(len(wave), 160_000, 0, 320)[1:]]
    chunks = plan_chunks(len(wave), 160_000, 16_000, 320)
    edges = [c.start for c in chunks[1:]] + [c.stop for c in chunks[:-1]]
    interiors = [(c.start + c.stop) // 2 for c in chunks]
    # The control shows seams are visible at this resolution ...
    assert _local_rms(cut, whole, cuts, half) > 4 * _local_rms(chunked, whole, cuts, half)
    # ... and cross-faded chunks have none: no worse at their edges than inside.
    assert _local_rms(chunked, whole, edges, half) < 2 * _local_rms(chunked, whole, interiors, half)


@pytest.mark.parametrize("preset", ["w2v-bert-2.0", "usm"])
def test_inputs_shorter_than_a_few_frames_still_restore(tiny_backbone, preset):
    restorer = _restorer(tiny_backbone(preset), preset)
    results = restorer.restore_batch([np.full(1, 0.1, np.float32), 0.1 * np.ones(800, np.float32)], [16000, 16000])
    assert [out.shape for out, _ in results] == [(2,), (1200,)]
    assert all(np.isfinite(out).all() for out, _ in results)
