"""Vocos without EnCodec: the lock and the image leave EnCodec out (CC BY-NC 4.0, never used), and
everything we use of vocos must still work; only EnCodec itself fails, saying why."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# EnCodec may be installed in a developer's environment: hide it as a fresh machine lacks it
# (a None entry in sys.modules makes `import encodec` raise ImportError).
PROBE = """
import sys
sys.modules["encodec"] = None
import torch
from miipher2.model.vocoders import vocoder_config, build_vocoder
from miipher2.model.vocoders.objectives import vocos_discriminator
vocoder = build_vocoder(vocoder_config("vocos", 32, input_hop=320, sample_rate=16000, size="tiny"))
wave = vocoder(torch.randn(1, 5, 32))
assert wave.shape == (1, 5 * 320), wave.shape
vocos_discriminator()
import encodec
assert encodec.EncodecModel.__name__ == "EncodecModel"
try:
    encodec.EncodecModel.encodec_model_24khz()
except ImportError as err:
    print("refused:", err)
"""


def test_vocos_trains_and_runs_without_encodec_and_encodec_says_why():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: EnCodec is not installed" in done.stdout and "CC BY-NC 4.0" in done.stdout


def test_the_locks_leave_encodec_out():
    for lock in ("requirements.lock", "requirements-dev.lock"):
        names = {line.split("==")[0].lower() for line in (REPO / lock).read_text().splitlines()
                 if line and not line.startswith("#")}
        assert "vocos" in names or lock != "requirements.lock"
        assert "encodec" not in names, lock
