"""The demo corpus's bytes must not depend on the CPU model: data.dvc pins them for every machine.

Each numeric step of the build runs natively and under user-mode QEMU emulating other x86-64
models (`qemu-x86_64 -cpu MODEL`, Debian's qemu-user, installed by `make setup`): an AMD EPYC
(AVX2 and FMA, no AVX-512: other numpy/OpenBLAS kernels) and a Nehalem (SSE4.2 only: baseline
numpy loops, glibc's non-FMA libm, mpg123's SSE decoder). espeak-ng, a separate program, is
emulated directly. A control that must differ (libsndfile's Opus at a CELT bitrate, whose encoder
uses the approximate-reciprocal instructions) proves that the emulated CPU computes differently.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from miipher2.data import synth

FINGERPRINT = Path(__file__).with_name("cpu_fingerprint.py")
CPU_MODELS = ("EPYC", "Nehalem")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates other x86-64 CPU models")]


def qemu() -> str:
    found = shutil.which("qemu-x86_64")
    assert found, "qemu-x86_64 not found: install the Debian package `qemu-user` (make setup does)"
    return found


def fingerprint(*emulator: str) -> dict:
    # The venv's interpreter by its venv path, so that QEMU's guest finds the same site-packages.
    result = subprocess.run([*emulator, sys.executable, str(FINGERPRINT)], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def native() -> dict:
    return fingerprint()


@pytest.mark.parametrize("cpu", CPU_MODELS)
def test_build_steps_give_the_same_bytes_on_other_cpu_models(cpu, native):
    emulated = fingerprint(qemu(), "-cpu", cpu)
    differing = sorted(step for step in native["reproducible"] if emulated["reproducible"].get(step) != native["reproducible"][step])
    assert differing == [], f"on an emulated {cpu} these build steps give other bytes: {differing}"
    assert emulated["cpu_dependent"]["codec opus"] != native["cpu_dependent"]["codec opus"], (
        "the control did not change: the emulated CPU computes like this one, so the comparison proves nothing")


@pytest.mark.parametrize("cpu", CPU_MODELS)
def test_espeak_speaks_the_same_samples_on_other_cpu_models(cpu):
    voice = synth.Voice("de", "f5", 153, 37)  # breathy variant: espeak-ng's noise generator is in play
    command = [synth.espeak_binary(), "-v", voice.espeak_name, "-s", str(voice.words_per_minute), "-p", str(voice.pitch),
               "--stdout", "--stdin"]
    text = "Am Samstag fahren wir mit dem Fahrrad zum See.".encode()

    def speak(*emulator: str) -> str:
        result = subprocess.run([*emulator, *command], input=text, capture_output=True, timeout=600, check=True)
        assert len(result.stdout) > 16000
        return hashlib.md5(result.stdout).hexdigest()

    assert speak(qemu(), "-cpu", cpu) == speak()
