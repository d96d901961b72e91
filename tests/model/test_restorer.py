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
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["adapters.safetensors", "config.yaml", "vocoder.safetensors"]
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
