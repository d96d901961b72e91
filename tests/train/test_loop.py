from __future__ import annotations

import os
import signal

import pytest

from miipher2.train.config import StageConfig
from miipher2.train.loop import StopSignal, lr_multiplier


def test_sigterm_becomes_a_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("schedule", ["constant", "cosine", "exponential"])
def test_warmup_then_schedule(schedule):
    multiplier = lr_multiplier(StageConfig(steps=110, warmup_steps=10, schedule=schedule, lr_decay=0.9))
    assert multiplier(0) == pytest.approx(0.1) and multiplier(9) == pytest.approx(1.0)
    assert multiplier(10) == pytest.approx(1.0)
    end = {"constant": 1.0, "cosine": 0.0, "exponential": 0.9 ** 100}[schedule]
    assert multiplier(110) == pytest.approx(end, abs=1e-12)
