"""Tiny random encoders saved like hub checkpoints, one per backbone family (built once per session)."""

from __future__ import annotations

import pytest

from miipher2.model.random_backbone import TINY_FEATURE_LAYER, TINY_LAYERS, save_random_backbone

# One preset per transformers family and layer-norm placement.
FAMILY_PRESETS = ["mhubert-147", "hubert-large", "wavlm-large", "w2v-bert-2.0", "usm"]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """tiny_backbone(preset) -> directory holding a saved random encoder of that preset."""
    made = {}

    def make(preset: str):
        if preset not in made:
            made[preset] = save_random_backbone(tmp_path_factory.mktemp(preset), preset, size="tiny", seed=0)
        return made[preset]

    return make


@pytest.fixture
def speechlike(rng):
    """Amplitude-modulated harmonics plus noise, 16 kHz: exercises every frequency band."""

    def make(seconds: float, rate: int = 16000):
        import numpy as np

        t = np.arange(int(seconds * rate)) / rate
        f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) ** 2
        return (0.1 * envelope * voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

    return make


__all__ = ["FAMILY_PRESETS", "TINY_FEATURE_LAYER", "TINY_LAYERS"]
