"""Vocos vocoder (Siuzdak 2023, arXiv 2306.00814) through the `vocos` package: a ConvNeXt backbone at
the feature frame rate and an inverse-STFT head, so no layer runs at the audio rate.

The SSL frame hop at the output rate is the iSTFT hop (480 samples = 20 ms at 24 kHz), with
Vocos' n_fft = 4 x hop; `frame_upsample` > 1 repeats each frame first (a finer iSTFT hop, at
that many times the backbone cost). docs/model.md says which we chose and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from miipher2.model.vocoders.base import BaseVocoder, ConfigDict, output_hop


@dataclass
class VocosConfig(ConfigDict):
    feature_dim: int  # SSL feature size = backbone input channels
    hop_length: int  # output samples per feature frame
    sample_rate: int = 24000
    frame_upsample: int = 1  # backbone frames per feature frame; iSTFT hop = hop_length / frame_upsample
    dim: int = 512  # Vocos' 24 kHz mel model: 512 / 1536 / 8 layers
    intermediate_dim: int = 1536
    num_layers: int = 8
    n_fft: int = 0  # 0: 4 x the iSTFT hop, Vocos' ratio (1024 / 256)

    def __post_init__(self):
        if self.frame_upsample < 1 or self.hop_length % self.frame_upsample:
            raise ValueError(f"vocos frame_upsample {self.frame_upsample} must be >= 1 and divide hop_length {self.hop_length}")
        if (self.fft_size - self.istft_hop) % 2 or self.fft_size < self.istft_hop:
            # "same" padding trims (n_fft - hop) / 2 samples per side: F * hop samples remain
            raise ValueError(f"vocos n_fft {self.fft_size} must be >= the iSTFT hop {self.istft_hop} and differ from it by an even number")

    @property
    def istft_hop(self) -> int:
        return self.hop_length // self.frame_upsample

    @property
    def fft_size(self) -> int:
        return self.n_fft or 4 * self.istft_hop

    @classmethod
    def for_features(cls, feature_dim: int, input_hop: int, sample_rate: int = 24000, input_rate: int = 16000,
                     size: str = "paper") -> VocosConfig:
        hop = output_hop(input_hop, sample_rate, input_rate)
        if size == "paper":
            return cls(feature_dim, hop, sample_rate)
        if size == "tiny":
            return cls(feature_dim, hop, sample_rate, dim=64, intermediate_dim=192, num_layers=2)
        raise ValueError(f"unknown vocoder size {size!r}; choose 'paper' or 'tiny'")


class VocosVocoder(BaseVocoder):
    """features [B, F, D] -> wave [B, F * hop_length] (not clipped: Vocos bounds magnitudes, not samples)."""

    kind = "vocos"

    def __init__(self, config: VocosConfig):
        super().__init__()
        from vocos.heads import ISTFTHead
        from vocos.models import VocosBackbone

        self.config = config
        self.backbone = VocosBackbone(input_channels=config.feature_dim, dim=config.dim,
                                      intermediate_dim=config.intermediate_dim, num_layers=config.num_layers)
        self.head = ISTFTHead(dim=config.dim, n_fft=config.fft_size, hop_length=config.istft_hop, padding="same")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.config.frame_upsample > 1:
            features = features.repeat_interleave(self.config.frame_upsample, dim=1)
        hidden = self.backbone(features.transpose(1, 2))
        # The head in fp32: complex spectra have no bf16 type, and bf16 output samples would carry
        # an 8-bit significand (a -50 dB error floor).
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())
