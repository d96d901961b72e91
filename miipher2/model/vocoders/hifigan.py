"""HiFi-GAN vocoder: speechbrain's HiFi-GAN generator with the SSL features as its input.

Its transposed convolutions multiply the frame rate by `hop_length` (output samples per feature
frame), so a 50 Hz feature sequence becomes 16 kHz (hop 320) or 24 kHz (hop 480) audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from torch.nn.utils import parametrize

from miipher2.model.vocoders.base import BaseVocoder, ConfigDict, output_hop

LRELU_SLOPE = 0.1  # speechbrain's and jik876's slope inside the generator


@dataclass
class HifiganConfig(ConfigDict):
    feature_dim: int  # SSL feature size = generator input channels
    hop_length: int  # output samples per feature frame
    sample_rate: int = 24000
    upsample_factors: list[int] = field(default_factory=list)  # empty: derived from hop_length
    upsample_kernel_sizes: list[int] = field(default_factory=list)  # empty: upsample_kernels(upsample_factors)
    upsample_initial_channel: int = 512
    resblock_type: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])

    def __post_init__(self):
        if not self.upsample_factors:
            self.upsample_factors = upsample_factors_for(self.hop_length)
        if not self.upsample_kernel_sizes:
            self.upsample_kernel_sizes = upsample_kernels(self.upsample_factors)
        product = 1
        for factor in self.upsample_factors:
            product *= factor
        if product != self.hop_length:
            raise ValueError(f"vocoder upsample_factors {self.upsample_factors} multiply to {product}, not hop_length {self.hop_length}")
        if len(self.upsample_kernel_sizes) != len(self.upsample_factors):
            raise ValueError("vocoder upsample_kernel_sizes and upsample_factors must have the same length")
        for k, u in zip(self.upsample_kernel_sizes, self.upsample_factors):
            if k % u or (k - u) % 2:  # uneven overlap (checkerboard), or an output that is not F * hop long
                raise ValueError(f"vocoder upsample kernel {k} for stride {u}: must be a multiple of the stride with (kernel - stride) even")
        if self.upsample_initial_channel % (2 ** len(self.upsample_factors)):
            raise ValueError(f"vocoder upsample_initial_channel={self.upsample_initial_channel} must be divisible by 2**{len(self.upsample_factors)} (it halves per stage)")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("vocoder resblock_kernel_sizes and resblock_dilation_sizes must have the same length")

    @classmethod
    def for_features(cls, feature_dim: int, input_hop: int, sample_rate: int = 24000, input_rate: int = 16000,
                     size: str = "paper") -> HifiganConfig:
        """Config for features with `input_hop` samples per frame at `input_rate`, vocoded at `sample_rate`.

        size="paper": HiFi-GAN V1 widths (512 channels, kernels 3/7/11); "tiny": for tests and
        CPU demos (64 channels, one residual block per stage).
        """
        hop = output_hop(input_hop, sample_rate, input_rate)
        if size == "paper":
            return cls(feature_dim, hop, sample_rate)
        if size == "tiny":
            return cls(feature_dim, hop, sample_rate, upsample_initial_channel=64, resblock_kernel_sizes=[3],
                       resblock_dilation_sizes=[[1, 3, 5]])
        raise ValueError(f"unknown vocoder size {size!r}; choose 'paper' or 'tiny'")


def upsample_factors_for(hop_length: int) -> list[int]:
    """Split the hop into per-stage factors, largest first, none above 8 (HiFi-GAN's largest)."""
    factors, rest = [], hop_length
    while rest > 1:
        factor = next((d for d in range(8, 1, -1) if rest % d == 0), None)
        if factor is None:
            raise ValueError(f"hop_length {hop_length} has a prime factor above 8; give upsample_factors explicitly")
        factors.append(factor)
        rest //= factor
    return factors


def upsample_kernels(factors: list[int]) -> list[int]:
    """Transposed-convolution kernels that are multiples of their stride, so every output sample
    gets the same number of contributions (no checkerboard): 2u as in HiFi-GAN V1 for even u,
    3u for odd u (2u would leave (k - u) odd, and the padding (k - u) / 2 could not give exactly
    F * u samples)."""
    return [2 * u if u % 2 == 0 else 3 * u for u in factors]


class HifiganVocoder(BaseVocoder):
    """features [B, F, D] -> wave [B, F * hop_length] in [-1, 1]."""

    kind = "hifigan"

    def __init__(self, config: HifiganConfig):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import HifiganGenerator

        self.config = config
        self.generator = HifiganGenerator(
            in_channels=config.feature_dim,
            out_channels=1,
            resblock_type=config.resblock_type,
            resblock_dilation_sizes=config.resblock_dilation_sizes,
            resblock_kernel_sizes=config.resblock_kernel_sizes,
            upsample_kernel_sizes=config.upsample_kernel_sizes,
            upsample_initial_channel=config.upsample_initial_channel,
            upsample_factors=config.upsample_factors,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # speechbrain's HifiganGenerator.forward, except that the output layers run in fp32: under
        # bf16 autocast the last convolution would give every sample an 8-bit significand, a
        # signal-correlated error floor near -50 dB.
        g = self.generator
        x = g.conv_pre(features.transpose(1, 2))
        for i, upsample in enumerate(g.ups):
            x = upsample(F.leaky_relu(x, LRELU_SLOPE))
            blocks = g.resblocks[i * g.num_kernels: (i + 1) * g.num_kernels]
            x = sum(block(x) for block in blocks) / g.num_kernels
        with torch.autocast(x.device.type, enabled=False):
            x = g.conv_post(F.leaky_relu(x.float()))  # default slope, as in the generator
            return torch.tanh(x).squeeze(1)

    @property
    def weight_norm_folded(self) -> bool:
        return not any(parametrize.is_parametrized(m, "weight") for m in self.generator.modules())

    def prepare_for_inference(self) -> None:
        """Bake weight norm into plain weights: it is otherwise recomputed for all ~80
        convolutions on every call (several % of CPU inference time). Saving still works:
        `training_state_dict` restores the parametrised form training uses."""
        for module in self.generator.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def training_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict in weight-norm form (what a fresh vocoder loads), folded or not."""
        state = self.state_dict()
        if not self.weight_norm_folded:
            return state
        result = {}
        for key in HifiganVocoder(self.config).state_dict():
            base, _, part = key.partition("parametrizations.weight.")
            if part == "original0":  # g: the norm of w over all but the output dimension
                weight = state[f"{base}weight"]
                result[key] = weight.flatten(1).norm(dim=1).reshape(-1, *([1] * (weight.ndim - 1)))
            elif part == "original1":  # v: any vector with w's direction; w itself
                result[key] = state[f"{base}weight"]
            else:
                result[key] = state[key]
        return result
