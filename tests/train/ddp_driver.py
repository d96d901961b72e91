"""Runs stage 1 on the tiny corpus, alone or as one torchrun worker (tests/train/test_ddp.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_driver.py CORPUS OUT CACHE STEPS RECORD [resume]

Rank 0 appends every logged loss and validation score to RECORD/losses.jsonl (validation runs
every 2 steps, each rank scoring its share of the val pairs); every rank appends its rank to
RECORD/saves.txt each time it writes a checkpoint (the test checks only rank 0 ever does).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def light_noise(wave, rng):
    return wave + 0.03 * rng.standard_normal(wave.size).astype(np.float32), []


class JsonlTracker:
    def __init__(self, path: Path):
        self.path = path

    def log_metrics(self, metrics, step=None):
        names = {"stage1/loss": "loss", "val/loss": "val_loss", "val/gap_closed": "gap_closed"}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **{names[k]: v for k, v in metrics.items() if k in names}}) + "\n")

    def log_params(self, params):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass


def config_for(cache: str, steps: int):
    from miipher2.train.config import load_config
    from tests.train.conftest import TINY_MODEL

    return load_config("demo-cpu", [*TINY_MODEL, f"cache.dir={cache}", "runtime.progress=false", "data.max_seconds=1.0",
                                    "data.min_seconds=0.3", "stage1.batch_size=4", f"stage1.steps={steps}",
                                    "stage1.checkpoint_every=2", "stage1.log_every=1", "stage1.schedule=constant",
                                    "stage1.eval_every=2", "validation.utterances=3"])


def main(corpus: str, out: str, cache: str, steps: str, record: str, resume: str = "") -> None:
    import miipher2.train.loop as loop
    from miipher2.train.distributed import shutdown_distributed
    from miipher2.train.stages import train_stage1

    record_dir = Path(record)
    save = loop.save_checkpoint

    def recording_save(*args, **kwargs):
        with (record_dir / "saves.txt").open("a") as handle:
            handle.write(f"{os.environ.get('RANK', '0')}\n")
        return save(*args, **kwargs)

    loop.save_checkpoint = recording_save
    rank = int(os.environ.get("RANK", 0))
    tracker = JsonlTracker(record_dir / "losses.jsonl") if rank == 0 else None
    try:
        result = train_stage1(config_for(cache, int(steps)), corpus, out, tracker=tracker, degrade=light_noise,
                              resume=resume == "resume")
    finally:
        shutdown_distributed()
    assert result.step == int(steps), result


if __name__ == "__main__":
    main(*sys.argv[1:])
