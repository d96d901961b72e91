"""Atomic, resumable training checkpoints.

    <out>/checkpoints/step-00001000/
        <module>.safetensors    trained weights only (adapters, vocoder, discriminators)
        trainer_state.pt        optimiser + scheduler state and torch RNG (tensors and plain
                                containers: read back with torch.load(weights_only=True))
        state.json              step, data position (epoch, batch), python + numpy RNG, metrics

A checkpoint is assembled in a hidden temp directory and renamed into place, so a preempted
node leaves either the previous checkpoints or a complete new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from miipher2.files import atomic_directory, atomic_file

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model it is loaded into."""


@dataclass
class DataPosition:
    """Where the sampler stands: the next batch to train on is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0


@dataclass
class Resumable:
    """Everything a stage restores on resume, by name."""

    modules: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer] = field(default_factory=dict)
    schedulers: Mapping[str, Any] = field(default_factory=dict)


def checkpoint_root(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(out_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(out_dir: str | os.PathLike, step: int, state: Resumable, position: DataPosition,
                    metrics: Mapping[str, float] | None = None, keep: int = 3) -> Path:
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    # Re-saving a step (e.g. SIGTERM right after a periodic save) replaces it whole.
    with atomic_directory(final) as tmp:
        for name, module in state.modules.items():
            save_file(_weights_of(module), str(tmp / f"{name}.safetensors"))
        torch.save({
            "optimizers": {k: v.state_dict() for k, v in state.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in state.schedulers.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, tmp / "trainer_state.pt")
        meta = {"step": step, "position": {"epoch": position.epoch, "batch": position.batch},
                "python_rng": _python_rng_to_json(random.getstate()),
                "numpy_rng": _numpy_rng_to_json(np.random.get_state(legacy=False)), "metrics": dict(metrics or {})}
        (tmp / "state.json").write_text(json.dumps(meta))
    _prune(root, keep)
    return final


def load_checkpoint(path: str | os.PathLike, state: Resumable) -> tuple[int, DataPosition, dict[str, float]]:
    """Restore weights, optimisers, schedulers and RNG; return (step, data position, metrics)."""
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no state.json)")
    for name, module in state.modules.items():
        weights_file = path / f"{name}.safetensors"
        if not weights_file.is_file():
            raise CheckpointError(f"{path}: missing {weights_file.name}")
        load_weights(module, weights_file)
    trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    for kind, objects in (("optimizers", state.optimizers), ("schedulers", state.schedulers)):
        missing = set(objects) - set(trainer[kind])
        if missing:
            raise CheckpointError(f"{path}: no state for {kind[:-1]} {sorted(missing)[0]!r}")
        for name, obj in objects.items():
            obj.load_state_dict(trainer[kind][name])
    torch.set_rng_state(trainer["torch_rng"])
    if trainer["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer["cuda_rng"])
    meta = json.loads((path / "state.json").read_text())
    random.setstate(_python_rng_from_json(meta["python_rng"]))
    np.random.set_state(_numpy_rng_from_json(meta["numpy_rng"]))
    return int(meta["step"]), DataPosition(**meta["position"]), meta.get("metrics", {})


def load_weights(module: nn.Module, weights_file: str | os.PathLike) -> None:
    """Load safetensors weights, naming the file and the first mismatching key on failure."""
    tensors = load_file(str(weights_file))
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{weights_file}: weights do not fit the model ({detail})")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{weights_file}: {key} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    module.load_state_dict(tensors)


def save_weights(module: nn.Module, weights_file: str | os.PathLike) -> None:
    """One safetensors file, written atomically."""
    with atomic_file(weights_file) as tmp:
        save_file(_weights_of(module), str(tmp))


def _weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied or parametrised weights)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob(".step-*.tmp"):  # left behind by a process killed mid-save (miipher2.files)
        shutil.rmtree(stale, ignore_errors=True)
    steps = [p for p in sorted(root.iterdir()) if p.is_dir() and _STEP_DIR.match(p.name)]
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return version, tuple(internal), gauss


def _numpy_rng_to_json(state: dict) -> dict:
    return {**state, "state": {**state["state"], "key": state["state"]["key"].tolist()}}


def _numpy_rng_from_json(state: dict) -> dict:
    return {**state, "state": {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}}
