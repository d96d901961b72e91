"""torchrun with 2 CPU processes (gloo) trains exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.conftest import TINY_MODEL
from tests.train.ddp_driver import main as run_driver

DRIVER = Path(__file__).with_name("ddp_driver.py")
REPO = Path(__file__).resolve().parents[2]


def torchrun(*args) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(DRIVER), *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def logged(record: Path, name: str = "loss") -> dict[int, float]:
    lines = (json.loads(line) for line in (record / "losses.jsonl").read_text().splitlines())
    return {line["step"]: line[name] for line in lines if name in line}


@pytest.mark.slow
def test_two_processes_match_one_and_resume(corpus, shared_cache, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    run_driver(str(corpus), str(tmp_path / "out-single"), str(shared_cache), "6", str(single))

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    torchrun(corpus, tmp_path / "out-ddp", shared_cache, 4, ddp)
    saves_first = (ddp / "saves.txt").read_text().split()
    torchrun(corpus, tmp_path / "out-ddp", shared_cache, 6, ddp, "resume")

    reference, distributed = logged(single), logged(ddp)
    assert len(reference) == len(distributed) == 6
    np.testing.assert_allclose(list(distributed.values()), list(reference.values()), rtol=1e-4)
    for name in ("val_loss", "gap_closed"):  # 3 val pairs split 2 + 1 over the ranks, sums all-reduced
        reference, distributed = logged(single, name), logged(ddp, name)
        assert sorted(reference) == [0, 2, 4, 6] and distributed.keys() == reference.keys()
        np.testing.assert_allclose(list(distributed.values()), list(reference.values()), rtol=1e-4, atol=1e-6)
    saves = (ddp / "saves.txt").read_text().split()
    assert saves_first == ["0", "0"] and saves == ["0"] * 3  # steps 2, 4 then 6: rank 0 only
    ckpts = sorted(p.name for p in (tmp_path / "out-ddp" / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000006"]  # keep_checkpoints=2 from demo-cpu


@pytest.mark.slow
def test_gan_stage_under_torchrun_with_a_fresh_cache(corpus, tmp_path):
    """Stage 2 (DDP generator + discriminator, no_sync during the generator step) on 2 processes;
    the fresh cache also makes rank 0 build the random backbone while rank 1 waits."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "MIIPHER2_NO_PROGRESS": "1"}
    sets = [a for item in (*TINY_MODEL, "stage2.steps=1", "stage2.batch_size=4", "stage2.segment_frames=8", "data.max_seconds=1.0",
                           "data.min_seconds=0.3") for a in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "miipher2.cli", "train", "stage2", "--config", "demo-cpu", "--data", str(corpus),
               "--out", str(tmp_path / "stage2"), "--cache", str(tmp_path / "cache"), *sets]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "stage2" / "result.json").read_text())
    assert result["step"] == 1 and np.isfinite(result["metrics"]["loss"])
    assert (tmp_path / "stage2" / "vocoder.safetensors").is_file()
