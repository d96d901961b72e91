from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from miipher2.train.checkpoint import (CheckpointError, DataPosition, Resumable, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, save_checkpoint)


def _state(seed: int) -> Resumable:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.9 ** s)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return Resumable({"model": model}, {"model": optimizer}, {"model": scheduler})


def test_round_trip_restores_weights_optimiser_scheduler_rng_and_position(tmp_path):
    saved = _state(0)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 7, saved, DataPosition(epoch=2, batch=5), {"loss": 0.5})
    expected = (random.random(), np.random.rand(), torch.rand(1))

    loaded = _state(99)
    step, position, metrics = load_checkpoint(path, loaded)
    assert (step, position, metrics) == (7, DataPosition(2, 5), {"loss": 0.5})
    for a, b in zip(saved.modules["model"].parameters(), loaded.modules["model"].parameters()):
        assert torch.equal(a, b)
    opt_a, opt_b = saved.optimizers["model"].state_dict(), loaded.optimizers["model"].state_dict()
    assert torch.equal(opt_a["state"][0]["exp_avg"], opt_b["state"][0]["exp_avg"])
    assert loaded.schedulers["model"].last_epoch == 1
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_keeps_the_last_k_and_leaves_no_temp_dirs(tmp_path):
    state = _state(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, state, DataPosition(), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries
    save_checkpoint(tmp_path, 4, state, DataPosition(), keep=2)  # re-saving a step replaces it
    assert len(list_checkpoints(tmp_path)) == 2


def test_a_failed_save_leaves_previous_checkpoints_intact(tmp_path):
    state = _state(0)
    save_checkpoint(tmp_path, 1, state, DataPosition())

    class Exploding(nn.Module):
        def state_dict(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, Resumable({"bad": Exploding()}), DataPosition())
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries


def test_mismatched_weights_are_named(tmp_path):
    path = save_checkpoint(tmp_path, 1, _state(0), DataPosition())
    other = Resumable({"model": nn.Sequential(nn.Linear(3, 8), nn.Linear(8, 2))})
    with pytest.raises(CheckpointError, match=r"0\.(weight|bias) has shape"):
        load_checkpoint(path, other)
    with pytest.raises(CheckpointError, match="missing vocoder.safetensors"):
        load_checkpoint(path, Resumable({"vocoder": nn.Linear(1, 1)}))
