"""Shared fixtures. Tests never touch the network or a GPU; tiny configs live in tmp dirs."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Keep tests hermetic: no hub downloads, no telemetry, CPU only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def tone(rng):
    """One second of a 440 Hz tone plus a little noise at 16 kHz: a stand-in for speech."""
    t = np.arange(16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def engine():
    """docker or podman, for the tests that build and run our images (tests/containers.py)."""
    from tests.containers import engine_or_skip

    return engine_or_skip()
