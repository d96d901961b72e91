"""A tiny corpus (varied lengths, a stereo 44.1 kHz file) and a tiny random restorer saved to disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from miipher2.audio import write_audio
from miipher2.data.manifest import COLUMNS, write_manifest
from tests.evaluate.builders import build_tiny_restorer

# utt_id -> (seconds, rate, channels)
UTTERANCES = {"a": (0.6, 16000, 1), "b": (1.4, 16000, 1), "c": (0.9, 44100, 2), "d": (0.3, 16000, 1),
              "e": (1.1, 22050, 1)}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus-model")
    return build_tiny_restorer(base / "model", base / "backbone", seed=0)


def speech(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(130 + 25 * np.sin(2 * np.pi * 0.8 * t)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 10)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.1 * voiced + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def build_corpus(root, utterances=UTTERANCES, extra_rows=()) -> str:
    """root/clean/en/spk/<id>.wav + root/manifests/test.csv; returns the manifest path."""
    rows = []
    for seed, (utt_id, (seconds, rate, channels)) in enumerate(utterances.items()):
        wave = speech(seconds, rate, seed)
        if channels == 2:
            wave = np.stack([wave, 0.5 * wave], axis=1)
        relative = f"clean/en/spk/{utt_id}.wav"
        write_audio(root / relative, wave, rate)
        rows.append({"utt_id": utt_id, "path": relative, "duration_s": seconds, "sample_rate": rate,
                     "channels": channels, "language": "en", "speaker": "spk", "split": "test",
                     "transcript": f"utterance {utt_id}"})
    rows.extend(extra_rows)
    manifest = root / "manifests" / "test.csv"
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest)
    return str(manifest)


@pytest.fixture
def corpus(tmp_path):
    return build_corpus(tmp_path / "data")


class CountingRestorer:
    """Wraps a Restorer; remembers the length of every wave it was asked to restore."""

    def __init__(self, restorer, fail_on_samples: int | None = None):
        self.restorer, self.fail_on_samples = restorer, fail_on_samples
        self.seen: list[int] = []

    def restore_batch(self, waves, rates):
        if self.fail_on_samples is not None and any(len(w) == self.fail_on_samples for w in waves):
            raise RuntimeError("simulated failure of one input")
        self.seen.extend(len(w) for w in waves)
        return self.restorer.restore_batch(waves, rates)


@pytest.fixture(scope="session")
def restorer(model_dir):
    from miipher2.model.restorer import Restorer

    return Restorer.from_pretrained(model_dir, "cpu", batch_size=4)
