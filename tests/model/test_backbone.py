"""FeatureCleaner on every backbone family: truncation, adapter placement, identity at init,
gradient flow and frozen-ness. The reference is always the ORIGINAL, untruncated transformers
model fed by the transformers feature extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from miipher2.model.backbone import BACKBONE_PRESETS, FAMILIES, FeatureCleaner
from tests.model.conftest import FAMILY_PRESETS, TINY_FEATURE_LAYER, TINY_LAYERS


def _cleaner(directory, preset, **kwargs) -> FeatureCleaner:
    return FeatureCleaner.from_pretrained(str(directory), preset, feature_layer=TINY_FEATURE_LAYER, adapter_dim=24, **kwargs)


def _reference_features(directory, preset, wave: np.ndarray, layer: int) -> np.ndarray:
    """Output of encoder layer `layer` of the full model, computed the transformers way."""
    spec = BACKBONE_PRESETS[preset]
    model = getattr(transformers, spec.model_class).from_pretrained(str(directory)).eval()
    extractor = transformers.AutoFeatureExtractor.from_pretrained(str(directory))
    with torch.no_grad():
        if spec.family == "gemma3n-audio":  # this encoder does not record hidden_states: hook the block
            captured = []
            handle = model.conformer[layer - 1].register_forward_hook(lambda m, i, o: captured.append(o))
            inputs = extractor(wave, return_tensors="pt")
            model(audio_mel=inputs["input_features"], audio_mel_mask=~inputs["input_features_mask"])
            handle.remove()
            return captured[0][0].numpy()
        inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
        return model(**inputs, output_hidden_states=True).hidden_states[layer][0].numpy()


def _randomise_adapters(cleaner: FeatureCleaner, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in cleaner.adapter_parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_encoder_is_truncated_and_every_kept_layer_hosts_one_adapter(tiny_backbone, preset):
    cleaner = _cleaner(tiny_backbone(preset), preset)
    family = FAMILIES[BACKBONE_PRESETS[preset].family]
    layers = family.layers(cleaner.encoder)
    assert TINY_FEATURE_LAYER < TINY_LAYERS
    assert len(layers) == TINY_FEATURE_LAYER == len(cleaner.adapters)
    for layer in layers:
        assert len(family.feed_forward(layer)._forward_hooks) == 1
    assert cleaner.feature_dim == 32 and cleaner.sample_rate == 16000


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_untrained_adapters_reproduce_the_frozen_encoder_layer(tiny_backbone, preset, speechlike):
    directory = tiny_backbone(preset)
    cleaner = _cleaner(directory, preset)
    pad = cleaner.input_padding
    # Gemma's extractor pads to a multiple of 128 samples; make that a no-op so both see the same ends.
    wave = speechlike(1.0)[: (16000 + 2 * pad) // 128 * 128 - 2 * pad]
    expected = _reference_features(directory, preset, np.pad(wave, (pad, pad)), TINY_FEATURE_LAYER)
    with torch.no_grad():
        features, frames = cleaner(torch.from_numpy(wave)[None])
    n = int(frames[0])
    assert abs(n - len(wave) / cleaner.hop_length) <= 1.5  # frames are centred on their hops
    scale = np.abs(expected[:n]).max()
    np.testing.assert_allclose(features[0, :n].numpy(), expected[:n], atol=1e-4 * scale, rtol=1e-3)

    # Non-vacuous: trained (non-zero) adapters do change the features; use_adapters=False does not.
    _randomise_adapters(cleaner)
    with torch.no_grad():
        adapted, _ = cleaner(torch.from_numpy(wave)[None])
        frozen, _ = cleaner(torch.from_numpy(wave)[None], use_adapters=False)
    assert np.abs(adapted[0, :n].numpy() - expected[:n]).max() > 1e-2 * scale
    np.testing.assert_allclose(frozen[0, :n].numpy(), expected[:n], atol=1e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_gradients_reach_only_the_adapters(tiny_backbone, preset, speechlike):
    cleaner = _cleaner(tiny_backbone(preset), preset).train()
    _randomise_adapters(cleaner)
    features, _ = cleaner(torch.from_numpy(speechlike(0.5))[None])
    features.pow(2).mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in cleaner.encoder.parameters())
    for index, adapter in enumerate(cleaner.adapters.adapters):  # every layer's adapter learns
        assert adapter.down.weight.grad is not None and adapter.down.weight.grad.abs().sum() > 0, index
        assert adapter.up.weight.grad.abs().sum() > 0, index


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_train_mode_keeps_the_frozen_encoder_in_eval_mode(tiny_backbone, preset):
    cleaner = _cleaner(tiny_backbone(preset), preset)
    torch.nn.ModuleDict({"cleaner": cleaner}).train()  # .train() from a parent, as a training loop does
    assert cleaner.training and cleaner.adapters.training
    assert not any(module.training for module in cleaner.encoder.modules())


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_padded_batch_items_match_their_solo_features(tiny_backbone, preset, speechlike):
    """A file's features must not depend on what it is batched with (restore_batch, stage-1 targets).

    Masks flow through the frontends' normalisation, the HuBERT-base first-layer GroupNorm,
    Gemma's look-ahead subsampling, attention and convolution.
    """
    cleaner = _cleaner(tiny_backbone(preset), preset)
    waves = [speechlike(1.0), speechlike(0.6)[::-1].copy(), speechlike(0.83)]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(wave)
    with torch.no_grad():
        features, frames = cleaner(batch, lengths)
        for row, wave in enumerate(waves):
            solo, solo_frames = cleaner(torch.from_numpy(wave)[None])
            n = int(solo_frames[0])
            assert int(frames[row]) == n, (preset, row)
            scale = float(solo.abs().max())
            torch.testing.assert_close(features[row, :n], solo[0, :n], atol=1e-5 * scale, rtol=1e-5)
            assert not features[row, n:].any()


def test_first_layer_group_norm_uses_only_valid_frames():
    """The masked GroupNorm against a hand computation on the valid part alone."""
    from miipher2.model.backbone import ValidFramesGroupNorm

    torch.manual_seed(0)
    plain = torch.nn.GroupNorm(4, 4)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0), plain.bias.uniform_(-1.0, 1.0)
    masked = ValidFramesGroupNorm.replacing(plain)
    x = torch.randn(2, 4, 10)
    x[1, :, 6:] = 0.0  # padding
    with ValidFramesGroupNorm.frames(masked, torch.tensor([10, 6])):
        y = masked(x)
    valid = x[1, :, :6]
    by_hand = (valid - valid.mean(1, keepdim=True)) / torch.sqrt(valid.var(1, unbiased=False, keepdim=True) + plain.eps)
    torch.testing.assert_close(y[1, :, :6], by_hand * plain.weight[:, None] + plain.bias[:, None])
    torch.testing.assert_close(y[0], plain(x[:1])[0])
    torch.testing.assert_close(masked(x), plain(x))  # outside `frames`, a plain GroupNorm
    with ValidFramesGroupNorm.frames(masked, torch.tensor([10, 10])):
        torch.testing.assert_close(masked(x), plain(x))  # no padding in the batch: the plain kernel
    assert set(masked.state_dict()) == set(plain.state_dict())  # checkpoint keys untouched


def test_missing_or_foreign_preprocessing_settings_fail_clearly(tiny_backbone, tmp_path):
    """No silent default feature extractor: its settings (e.g. do_normalize) may be wrong for the model."""
    import shutil

    from miipher2.model.backbone import FeatureExtractorError

    source = tiny_backbone("mhubert-147")
    bare = tmp_path / "bare"
    shutil.copytree(source, bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(FeatureExtractorError, match=r"bare: cannot load the encoder's preprocessing settings "
                                                    r"\(preprocessor_config.json for a Wav2Vec2FeatureExtractor\)"):
        FeatureCleaner.from_pretrained(str(bare), "mhubert-147", feature_layer=1)
    transformers.SeamlessM4TFeatureExtractor().save_pretrained(bare)
    with pytest.raises(FeatureExtractorError, match="describes a SeamlessM4TFeatureExtractor"):
        FeatureCleaner.from_pretrained(str(bare), "mhubert-147", feature_layer=1)


def test_bad_arguments_are_named(tiny_backbone):
    directory = str(tiny_backbone("mhubert-147"))
    with pytest.raises(ValueError, match="unknown backbone preset 'nope'"):
        FeatureCleaner.from_pretrained(directory, "nope")
    with pytest.raises(ValueError, match=r"feature_layer=9 is outside 1..4"):
        FeatureCleaner.from_pretrained(directory, "mhubert-147", feature_layer=9)
    cleaner = FeatureCleaner.from_pretrained(directory, "mhubert-147", feature_layer=1, adapter_dim=8)
    with pytest.raises(ValueError, match="wave must be"):
        cleaner(torch.zeros(16000))


def test_adapter_state_dict_round_trip(tiny_backbone):
    directory = tiny_backbone("mhubert-147")
    first, second = _cleaner(directory, "mhubert-147"), _cleaner(directory, "mhubert-147")
    _randomise_adapters(first)
    second.load_adapter_state_dict(first.adapter_state_dict())
    assert set(first.adapter_state_dict()) == {f"adapters.{i}.{name}" for i in range(TINY_FEATURE_LAYER) for name in ("norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up.bias")}
    wave = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(first(wave)[0], second(wave)[0])


def test_usm_preset_reads_only_the_audio_tower_of_a_full_gemma3n_checkpoint(tiny_backbone, tmp_path, speechlike):
    """google/gemma-3n-* ship the whole multimodal model; the loader picks `model.audio_tower.*`."""
    from safetensors.torch import load_file, save_file

    audio_dir = tiny_backbone("usm")
    audio_config = transformers.AutoConfig.from_pretrained(str(audio_dir))
    transformers.Gemma3nConfig(audio_config=audio_config.to_dict()).save_pretrained(tmp_path)
    tensors = {f"model.audio_tower.{k}": v for k, v in load_file(audio_dir / "model.safetensors").items()}
    tensors["model.language_model.embed_tokens.weight"] = torch.zeros(4, 4)  # the rest of the model
    save_file(tensors, tmp_path / "model.safetensors")
    transformers.Gemma3nAudioFeatureExtractor().save_pretrained(tmp_path)

    wave = torch.from_numpy(speechlike(0.5))[None]
    with torch.no_grad():
        from_full = _cleaner(tmp_path, "usm")(wave)[0]
        from_audio_only = _cleaner(audio_dir, "usm")(wave)[0]
    torch.testing.assert_close(from_full, from_audio_only)


def test_a_deep_copy_uses_its_own_adapters(tiny_backbone):
    import copy

    cleaner = _cleaner(tiny_backbone("w2v-bert-2.0"), "w2v-bert-2.0")
    twin = copy.deepcopy(cleaner)
    _randomise_adapters(twin)
    wave = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(cleaner(wave)[0], cleaner(wave, use_adapters=False)[0])  # original untouched
        assert not torch.allclose(twin(wave)[0], cleaner(wave)[0])
