"""Stand-in systems with known behaviour, to check the evaluation plumbing against known answers."""

from __future__ import annotations

import numpy as np

from miipher2.audio import resample


class Upsampler:
    """A 'restorer' that returns its input at 24 kHz: it must score exactly like the degraded row."""

    sample_rate = 24000

    def restore(self, wave, rate):
        return resample(np.asarray(wave, dtype=np.float32), rate, self.sample_rate), self.sample_rate


class FailsOn:
    """The identity, except that it raises on inputs of one length (one utterance)."""

    def __init__(self, name: str, bad_length: int):
        self.name, self.bad_length = name, bad_length

    def enhance(self, wave, rate):
        if wave.size == self.bad_length:
            raise RuntimeError("out of memory (simulated)")
        return wave, rate


class WhereAmI:
    """Fails on purpose with the id of the process it ran in, so a test can see where that was."""

    name = "where_am_i"
    runs_in_workers = True

    def enhance(self, wave, rate):
        import os

        raise RuntimeError(f"ran in process {os.getpid()}")
