"""Batched torch versions of the transformers feature extractors our backbones were trained on.

The transformers extractors are numpy loops over one utterance at a time (the SeamlessM4T
fbank costs more CPU than a small encoder). These modules compute the same numbers on the
model's device, for a whole padded batch, from the extractor's own window and mel matrix, so
there is one source of truth for the constants. tests/model/test_frontends.py checks them
against the transformers extractors.

Every frontend maps (wave [B, T] float, lengths [B]) -> (inputs, mask): `inputs` is what the
encoder takes and `mask` [B, N] is True on valid (non-padding) positions.
"""

from __future__ import annotations

import torch
from torch import nn


def _valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class WaveNormalizer(nn.Module):
    """Wav2Vec2FeatureExtractor for HuBERT / WavLM: optional per-utterance zero-mean unit-variance."""

    def __init__(self, feature_extractor):
        super().__init__()
        self.do_normalize = bool(getattr(feature_extractor, "do_normalize", False))

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = _valid_mask(lengths, wave.shape[1])
        if not self.do_normalize:
            return wave * mask, mask
        n = lengths.clamp_min(1).to(wave.dtype)[:, None]
        mean = (wave * mask).sum(1, keepdim=True) / n
        var = (((wave - mean) * mask) ** 2).sum(1, keepdim=True) / n
        return (wave - mean) / torch.sqrt(var + 1e-7) * mask, mask


class KaldiFbank(nn.Module):
    """SeamlessM4TFeatureExtractor (w2v-BERT 2.0): Kaldi-style log-mel fbank, per-utterance
    per-bin normalisation, then `stride` consecutive frames stacked into one input vector."""

    FRAME, HOP, N_FFT = 400, 160, 512

    def __init__(self, feature_extractor):
        super().__init__()
        self.register_buffer("window", torch.tensor(feature_extractor.window, dtype=torch.float32), persistent=False)
        self.register_buffer("mel_filters", torch.tensor(feature_extractor.mel_filters, dtype=torch.float32), persistent=False)
        self.stride = int(feature_extractor.stride)

    @torch.autocast("cuda", enabled=False)
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = wave.float() * 32768.0  # Kaldi works on 16-bit integer scale
        if wave.shape[1] < self.FRAME:
            wave = nn.functional.pad(wave, (0, self.FRAME - wave.shape[1]))
        frames = wave.unfold(-1, self.FRAME, self.HOP)  # [B, N, 400]
        frames = frames - frames.mean(-1, keepdim=True)  # remove DC offset
        frames = torch.cat([frames[..., :1] * (1 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=-1)
        power = torch.fft.rfft(frames * self.window, n=self.N_FFT).abs().pow(2)
        log_mel = (power @ self.mel_filters).clamp_min(1.192092955078125e-07).log()

        n_valid = ((lengths - self.FRAME) // self.HOP + 1).clamp_min(0)
        mask = _valid_mask(n_valid, log_mel.shape[1])
        m = mask[..., None].to(log_mel.dtype)
        count = n_valid.clamp_min(1).to(log_mel.dtype)[:, None, None]
        mean = (log_mel * m).sum(1, keepdim=True) / count
        var = (((log_mel - mean) * m) ** 2).sum(1, keepdim=True) / (count - 1).clamp_min(1)  # ddof=1 like the extractor
        features = (log_mel - mean) / torch.sqrt(var + 1e-7) * m

        batch, n, bins = features.shape
        if n % self.stride:  # the extractor pads to a multiple of the stride
            pad = self.stride - n % self.stride
            features = nn.functional.pad(features, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad))
            n += pad
        features = features.reshape(batch, n // self.stride, bins * self.stride)
        return features, mask[:, self.stride - 1 :: self.stride]


class Gemma3nLogMel(nn.Module):
    """Gemma3nAudioFeatureExtractor (USM audio encoder): HTK-preemphasised magnitude log-mel."""

    def __init__(self, feature_extractor):
        super().__init__()
        fe = feature_extractor
        self.frame_length, self.hop_length, self.fft_length = fe.frame_length, fe.hop_length, fe.fft_length
        self.preemphasis, self.htk_flavor = float(fe.preemphasis), bool(fe.preemphasis_htk_flavor)
        self.input_scale_factor, self.mel_floor = float(fe.input_scale_factor), float(fe.mel_floor)
        self.register_buffer("window", torch.tensor(fe.window, dtype=torch.float32), persistent=False)
        self.register_buffer("mel_filters", torch.tensor(fe.mel_filters, dtype=torch.float32), persistent=False)
        mean = torch.zeros(fe.feature_size) if fe.per_bin_mean is None else torch.tensor(fe.per_bin_mean).reshape(-1)
        std = torch.ones(fe.feature_size) if fe.per_bin_stddev is None else torch.tensor(fe.per_bin_stddev).reshape(-1)
        self.register_buffer("per_bin_mean", mean.float(), persistent=False)
        self.register_buffer("per_bin_stddev", std.float(), persistent=False)

    @torch.autocast("cuda", enabled=False)
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = wave.float() * self.input_scale_factor
        size = self.frame_length + 1  # one extra sample feeds the preemphasis of the first one
        if wave.shape[1] < size:
            wave = nn.functional.pad(wave, (0, size - wave.shape[1]))
        frames = wave.unfold(-1, size, self.hop_length)
        if self.preemphasis > 0 and self.htk_flavor:
            frames = torch.cat([frames[..., :1] * (1 - self.preemphasis), frames[..., 1:-1] - self.preemphasis * frames[..., :-2]], -1)
        elif self.preemphasis > 0:
            frames = frames[..., 1:] - self.preemphasis * frames[..., :-1]
        else:
            frames = frames[..., :-1]
        magnitude = torch.fft.rfft(frames * self.window, n=self.fft_length).abs()
        log_mel = (magnitude @ self.mel_filters).clamp_min(self.mel_floor).log()
        log_mel = (log_mel - self.per_bin_mean) / self.per_bin_stddev
        # Valid frames lie wholly inside the item, as every frame of a solo run does. (The transformers
        # extractor also counts frames that start inside and run into padding: with it a padded item's
        # features would depend on how much padding its batch adds.)
        n_valid = ((lengths - size) // self.hop_length + 1).clamp_min(0)
        return log_mel, _valid_mask(n_valid, log_mel.shape[1])
