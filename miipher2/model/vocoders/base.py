"""What every vocoder kind shares: SSL features [B, F, D] -> wave [B, F * hop_length] in [-1, 1].

`hop_length` is the feature frame hop counted in output samples (480 for 50 Hz frames at 24 kHz),
so the restored wave lines up sample for sample with the input, whatever the kind.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn


def output_hop(input_hop: int, sample_rate: int, input_rate: int) -> int:
    """Output samples per feature frame, for frames `input_hop` samples apart at `input_rate`."""
    if (input_hop * sample_rate) % input_rate:
        raise ValueError(f"a frame hop of {input_hop} samples at {input_rate} Hz is not a whole number of samples "
                         f"at {sample_rate} Hz")
    return input_hop * sample_rate // input_rate


class ConfigDict:
    """to_dict / from_dict for a kind's config dataclass; unknown fields are refused by name."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown vocoder config field(s): {sorted(unknown)}")
        return cls(**values)


class BaseVocoder(nn.Module):
    """forward(features [B, F, D]) -> wave [B, F * hop_length]; `config` has feature_dim, hop_length
    and sample_rate; `kind` names the registry entry (`miipher2.model.vocoders.KINDS`)."""

    kind: ClassVar[str]

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def prepare_for_inference(self) -> None:
        """Make inference cheaper without changing the output (HiFi-GAN folds its weight norm)."""

    def training_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict a freshly built vocoder of this config loads (what a model directory stores)."""
        return self.state_dict()
