"""WaveFit (Koizumi et al. 2022, arXiv 2210.01029), the vocoder of Miipher and Miipher-2.

WaveFit is a fixed-point iteration: starting from noise y_T, each of T steps subtracts the
noise a WaveGrad-like generator F estimates, then rescales the result to a target power:

    y_{t-1} = G(y_t - F(y_t, c, t), c)        G(z, c) = z * sqrt(P_c / P_z)

Every iterate is a waveform, and training applies the losses to each one (the objective in
`miipher2.model.vocoders.objectives`); gradients do not flow from one iterate into the next.

Conditioning c is the SSL feature sequence, as in Miipher-2 (Open-Miipher-2 uses T = 5), with:
- a pre-network of ConvNeXt blocks (the `vocos` package's) at the frame rate, where Miipher-2
  puts Conformer blocks;
- Miipher-2's memory-efficient FiLM (shift only, none at the full audio rate);
- the target power P_c predicted from the features by a linear layer (log power per frame). WaveFit
  computes P_c from its log-mel input; SSL features have no such closed form. Open-Miipher-2 instead
  peak-normalises output and target to 0.9, which on our short training windows would amplify a
  silent window ~100x; a learnt power keeps the input's level, as the other vocoder kinds do.
The generator follows WaveGrad (arXiv 2009.00713): upsampling blocks on the features, downsampling
blocks on y_t whose outputs modulate them (FiLM), for any factorisation of the hop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from miipher2.model.vocoders.base import BaseVocoder, ConfigDict, output_hop

PAPER_CHANNELS = [512, 512, 256, 128, 128]  # WaveGrad base / Open-Miipher-2, first upsampling block first
LOG_POWER_INIT = math.log(1e-2)  # about -20 dBFS mean power: where the gain head starts
EPS = 1e-8


@dataclass
class WaveFitConfig(ConfigDict):
    feature_dim: int
    hop_length: int  # output samples per feature frame
    sample_rate: int = 24000
    iterations: int = 5  # T; Open-Miipher-2 uses WaveFit-5
    upsample_factors: list[int] = field(default_factory=list)  # empty: the hop split into factors <= 5
    channels: list[int] = field(default_factory=list)  # per upsampling block; empty: WaveGrad's widths
    prenet_layers: int = 2  # ConvNeXt blocks on the features before the generator

    def __post_init__(self):
        if not self.upsample_factors:
            self.upsample_factors = _factors(self.hop_length)
        if math.prod(self.upsample_factors) != self.hop_length:
            raise ValueError(f"wavefit upsample_factors {self.upsample_factors} multiply to "
                             f"{math.prod(self.upsample_factors)}, not hop_length {self.hop_length}")
        if not self.channels:
            n = len(self.upsample_factors)
            self.channels = ([512] * n + PAPER_CHANNELS)[-n:] if n > len(PAPER_CHANNELS) else PAPER_CHANNELS[-n:]
        if len(self.channels) != len(self.upsample_factors):
            raise ValueError("wavefit channels and upsample_factors must have the same length")
        if self.iterations < 1:
            raise ValueError(f"wavefit iterations must be >= 1, got {self.iterations}")

    @classmethod
    def for_features(cls, feature_dim: int, input_hop: int, sample_rate: int = 24000, input_rate: int = 16000,
                     size: str = "paper") -> WaveFitConfig:
        hop = output_hop(input_hop, sample_rate, input_rate)
        if size == "paper":
            return cls(feature_dim, hop, sample_rate)
        if size == "tiny":
            factors = _factors(hop)
            return cls(feature_dim, hop, sample_rate, iterations=2, channels=[32] * len(factors), prenet_layers=1)
        raise ValueError(f"unknown vocoder size {size!r}; choose 'paper' or 'tiny'")


def _factors(hop: int) -> list[int]:
    """The hop split into factors of at most 5, largest first (480 = 5*4*4*3*2, like WaveGrad's 300 = 5*5*3*2*2)."""
    factors, rest = [], hop
    while rest > 1:
        factor = next((d for d in (5, 4, 3, 2) if rest % d == 0), None)
        if factor is None:
            raise ValueError(f"hop_length {hop} has a prime factor above 5; give upsample_factors explicitly")
        factors.append(factor)
        rest //= factor
    return factors


def conv(cin: int, cout: int, kernel: int = 3, dilation: int = 1, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation, padding=dilation * (kernel // 2))


class FiLM(nn.Module):
    """Miipher-2's memory-efficient FiLM: a shift only, from y_t's downsampled features and the step t."""

    def __init__(self, cin: int, cout: int, iterations: int):
        super().__init__()
        self.input, self.output = conv(cin, cin), conv(cin, cout)
        self.step = nn.Embedding(iterations, cin)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.output(F.leaky_relu(self.input(x), 0.2) + self.step.weight[t][None, :, None])


class UBlock(nn.Module):
    """WaveGrad's upsampling block: nearest-neighbour upsampling, dilated convolutions, FiLM shifts."""

    def __init__(self, cin: int, cout: int, factor: int, dilations: tuple[int, int, int, int]):
        super().__init__()
        self.factor = factor
        self.skip = conv(cin, cout, 1)
        self.convs = nn.ModuleList([conv(cin, cout, 3, dilations[0])] +
                                   [conv(cout, cout, 3, d) for d in dilations[1:]])

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")

    def forward(self, x: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
        first, second, third, fourth = self.convs
        h = second(F.leaky_relu(first(self.upsample(F.leaky_relu(x, 0.2))) + shift, 0.2))
        x = self.skip(self.upsample(x)) + h
        h = third(F.leaky_relu(x + shift, 0.2))
        return x + fourth(F.leaky_relu(h + shift, 0.2))


class DBlock(nn.Module):
    """WaveGrad's downsampling block (strided convolution, dilated convolutions, residual)."""

    def __init__(self, cin: int, cout: int, factor: int):
        super().__init__()
        kernel = factor // 2 * 2 + 1
        self.skip = nn.Sequential(conv(cin, cin, 1), nn.Conv1d(cin, cout, kernel, factor, kernel // 2))
        self.down = nn.Conv1d(cin, cin, kernel, factor, kernel // 2)
        self.convs = nn.ModuleList([conv(cin, cin, 3, 1), conv(cin, cin, 3, 2), conv(cin, cout, 3, 4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        for layer in self.convs:
            h = layer(F.leaky_relu(h, 0.2))
        return h + self.skip(x)


class WaveFitGenerator(nn.Module):
    """F(y_t, c, t): the noise in y_t [B, 1, L], given features c [B, D, F] with L = F * prod(factors)."""

    def __init__(self, config: WaveFitConfig):
        super().__init__()
        factors, channels = config.upsample_factors, config.channels
        self.up = nn.ModuleList(
            UBlock(cin, cout, u, (1, 2, 1, 2) if i < len(factors) - 3 else (1, 2, 4, 8))  # as WaveGrad's
            for i, (cin, cout, u) in enumerate(zip([config.feature_dim] + channels[:-1], channels, factors)))
        # y_t is downsampled to the resolution after each upsampling block but the last (the full
        # rate, which gets no FiLM in Miipher-2's memory-efficient variant).
        down_channels = [32] + ([channels[-1]] + channels[1:-1][::-1])[: len(factors) - 1]
        self.first = conv(1, 32, 5)
        self.down = nn.ModuleList(DBlock(cin, cout, u) for cin, cout, u in
                                  zip(down_channels[:-1], down_channels[1:], factors[1:][::-1]))
        self.film = nn.ModuleList(FiLM(down_channels[len(factors) - 1 - i], channels[i], config.iterations)
                                  for i in range(len(factors) - 1))
        self.last = conv(channels[-1], 1)

    def forward(self, y: torch.Tensor, c: torch.Tensor, t: int) -> torch.Tensor:
        levels = [self.first(y)]  # full rate, then ever coarser
        for block in self.down:
            levels.append(block(levels[-1]))
        x = c
        for i, block in enumerate(self.up):
            x = block(x, self.film[i](levels[-1 - i], t) if i < len(self.film) else 0.0)
        return self.last(x)


class WaveFitVocoder(BaseVocoder):
    """features [B, F, D] -> wave [B, F * hop_length]; `forward(..., all_iterations=True)` returns
    every iterate (the last is the output)."""

    kind = "wavefit"

    def __init__(self, config: WaveFitConfig):
        super().__init__()
        from vocos.modules import ConvNeXtBlock

        self.config = config
        dim = config.feature_dim
        self.prenet = nn.ModuleList(ConvNeXtBlock(dim, 3 * dim, 1 / max(config.prenet_layers, 1))
                                    for _ in range(config.prenet_layers))
        self.log_power = nn.Linear(dim, 1)  # the gain target: log mean power of the wave, per frame
        nn.init.zeros_(self.log_power.weight)
        nn.init.constant_(self.log_power.bias, LOG_POWER_INIT)
        self.generator = WaveFitGenerator(config)

    def forward(self, features: torch.Tensor, all_iterations: bool = False) -> torch.Tensor | list[torch.Tensor]:
        c = features.transpose(1, 2)
        for block in self.prenet:
            c = block(c)
        with torch.autocast(features.device.type, enabled=False):  # gain arithmetic in fp32
            power = self.log_power(features.float()).clamp(-30, 5).exp().mean(dim=(1, 2))[:, None, None]
        y = self.initial_noise(features.shape[0], features.shape[1] * self.hop_length, features.device)
        iterates = []
        for t in range(self.config.iterations):
            noise = self.generator(y, c, t)
            with torch.autocast(features.device.type, enabled=False):  # y stays fp32 (see HiFi-GAN's output)
                z = y - noise.float()
                y = z * torch.sqrt(power / (z.pow(2).mean(dim=2, keepdim=True) + EPS))
            iterates.append(y.squeeze(1))
            y = y.detach()
        return iterates if all_iterations else iterates[-1]

    def initial_noise(self, batch: int, samples: int, device: torch.device) -> torch.Tensor:
        """y_T ~ N(0, I); in eval mode from a fixed seed, so restoring the same input twice gives the same wave."""
        generator = None if self.training else torch.Generator().manual_seed(0)
        return torch.randn(batch, 1, samples, generator=generator).to(device)
