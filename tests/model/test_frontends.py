"""The batched torch frontends compute what the transformers feature extractors compute."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from miipher2.model.frontends import Gemma3nLogMel, KaldiFbank, WaveNormalizer


def _batch(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = torch.from_numpy(wave)
    return batch, lengths


def test_kaldi_fbank_matches_seamless_m4t_extractor_per_item_in_a_padded_batch(rng):
    extractor = transformers.SeamlessM4TFeatureExtractor()
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 9123)]
    features, mask = KaldiFbank(extractor)(*_batch(waves))
    for row, wave in enumerate(waves):
        expected = extractor(wave, sampling_rate=16000, return_tensors="np")
        n = expected["input_features"].shape[1]
        np.testing.assert_array_equal(mask[row, :n].numpy(), expected["attention_mask"][0].astype(bool))
        assert not mask[row, n:].any()
        np.testing.assert_allclose(features[row, :n].numpy(), expected["input_features"][0], atol=2e-3, rtol=1e-3)
        assert not features[row, n:].any()


def test_gemma3n_log_mel_matches_gemma3n_audio_extractor(rng):
    extractor = transformers.Gemma3nAudioFeatureExtractor()
    wave = 0.1 * rng.standard_normal(16000).astype(np.float32)
    expected = extractor(wave, return_tensors="np")
    padded = np.zeros(expected["input_features"].shape[1] * extractor.hop_length + extractor.frame_length + 1, np.float32)
    padded[: len(wave)] = wave  # the extractor pads to a multiple of 128 samples
    features, mask = Gemma3nLogMel(extractor)(torch.from_numpy(padded[None]), torch.tensor([len(wave)]))
    n = expected["input_features"].shape[1]
    np.testing.assert_allclose(features[0, :n].numpy(), expected["input_features"][0], atol=1e-3, rtol=1e-4)
    np.testing.assert_array_equal(mask[0, :n].numpy(), expected["input_features_mask"][0])


def test_wave_normalizer_matches_wav2vec2_extractor(rng):
    extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=True)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) + 0.05 for n in (4000, 2500)]
    normalized, mask = WaveNormalizer(extractor)(*_batch(waves))
    for row, wave in enumerate(waves):
        expected = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
        np.testing.assert_allclose(normalized[row, : len(wave)].numpy(), expected, atol=1e-4)
        assert not normalized[row, len(wave) :].any()
    assert mask.sum(1).tolist() == [4000, 2500]
