"""A tiny synthetic corpus and tiny configs: every stage runs in seconds on the real code paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from miipher2.audio import write_audio
from miipher2.data.degrade import materialize_degraded
from miipher2.data.manifest import COLUMNS, manifest_path, write_manifest
from miipher2.train.config import load_config

RATE = 16000


def voiced(seconds: float, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Speech-like: a harmonic tone with a syllable-rate envelope and a little breath noise."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)))
    return (0.2 * wave * envelope + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def make_corpus(root: Path, count: int = 8, seed: int = 0, val: int = 3) -> Path:
    """`count` train utterances of two speakers; `val` held-out ones of a third speaker with
    their materialised degraded copies (manifests/val_degraded.csv), as the demo corpus has."""
    rng = np.random.default_rng(seed)
    for split, n, speakers in (("train", count, ("spk0", "spk1")), ("val", val, ("spk2",))):
        rows = []
        for i in range(n):
            seconds = float(rng.uniform(0.8, 1.6))
            speaker = speakers[i % len(speakers)]
            utt_id = f"{split}{i:02d}"
            relative = f"clean/en/{speaker}/{utt_id}.wav"
            write_audio(root / relative, voiced(seconds, 100 + 15 * i, rng), RATE)
            rows.append({"utt_id": utt_id, "path": relative, "duration_s": seconds, "sample_rate": RATE,
                         "channels": 1, "language": "en", "speaker": speaker, "split": split, "transcript": ""})
        write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, split))
    if val:
        materialize_degraded(root, splits=("val",), seed=seed)
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One random tiny backbone (and feature cache) for the whole session."""
    return tmp_path_factory.mktemp("cache")


# demo-cpu's model at its smallest (a 32-dim random encoder, a tiny Vocos) and every GAN step on:
# the machinery at a fraction of the demo's cost.
TINY_MODEL = ["encoder.source=random:tiny", "encoder.feature_layer=null", "encoder.adapter_dim=64",
              "vocoder.size=tiny", "stage2.adversarial_start=0", "stage3.adversarial_start=0"]


def tiny_overrides(cache: Path) -> list[str]:
    return [f"cache.dir={cache}", "runtime.progress=false", "data.max_seconds=1.0", "data.min_seconds=0.3",
            "stage1.batch_size=4", "stage2.batch_size=4", "stage3.batch_size=4",
            "stage2.segment_frames=8", "stage3.segment_frames=8", "validation.utterances=3", "validation.examples=2",
            *TINY_MODEL]


@pytest.fixture
def tiny_config(shared_cache):
    def make(*overrides: str):
        return load_config("demo-cpu", tiny_overrides(shared_cache) + list(overrides))

    return make
