"""The step loop every stage shares: resume, batches, progress, logging, checkpoints, SIGTERM.

A stage supplies what is trained (`Resumable`), the data (dataset + length-bucketed sampler) and
one `step(batch) -> metrics` function; this module does the bookkeeping identically for all
three, on one process or under torchrun.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from miipher2.train.checkpoint import (DataPosition, Resumable, latest_checkpoint, list_checkpoints,
                                       load_checkpoint, save_checkpoint)
from miipher2.train.config import RuntimeConfig, StageConfig
from miipher2.train.data import LengthBucketBatchSampler, collate
from miipher2.train.distributed import DistContext, any_rank, barrier, mean_across_ranks

StepFn = Callable[[dict[str, Any]], dict[str, float]]


class ResumeError(RuntimeError):
    """Checkpoints exist but resuming was not asked for (or the reverse); never overwrite silently."""


@dataclass
class StageResult:
    stage: str
    out_dir: Path
    step: int                      # steps completed
    metrics: dict[str, float]      # the last logged values
    interrupted: bool = False      # stopped by SIGTERM after saving a checkpoint; run again with resume
    checkpoint_dir: Path | None = None
    weights: dict[str, Path] = field(default_factory=dict)  # final weights, when the stage completed
    encoder_identity: str = ""
    validation: dict[str, Any] = field(default_factory=dict)  # best (step, value, metrics) and last val scores

    def to_json(self) -> str:
        return json.dumps({"stage": self.stage, "out_dir": str(self.out_dir), "step": self.step,
                           "metrics": self.metrics, "interrupted": self.interrupted,
                           "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
                           "weights": {k: str(v) for k, v in self.weights.items()},
                           "encoder_identity": self.encoder_identity, "validation": self.validation}, indent=2)


class StopSignal:
    """Turns SIGTERM (preemption, `kubectl delete`, torchrun shutting workers down) into a flag
    the loop checks after every step, so it can save a checkpoint and return cleanly."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals, self.requested, self._previous = signals, False, {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def lr_multiplier(stage: StageConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant, cosine (to 0 at `steps`) or exponential decay."""

    def multiplier(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        after = step - stage.warmup_steps
        if stage.schedule == "cosine":
            span = max(stage.steps - stage.warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(after / span, 1.0)))
        if stage.schedule == "exponential":
            return stage.lr_decay ** after
        return 1.0

    return multiplier


def autocast_for(ctx: DistContext, runtime: RuntimeConfig):
    if ctx.device.type == "cuda" and runtime.precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def configure_backends(ctx: DistContext, runtime: RuntimeConfig) -> None:
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32


def prepare_out_dir(out_dir: Path, resume: bool) -> None:
    if list_checkpoints(out_dir) and not resume:
        raise ResumeError(f"{out_dir} already holds checkpoints: resume them (--resume) or choose another output directory")


def run_loop(*, stage: str, stage_config: StageConfig, ctx: DistContext, runtime: RuntimeConfig, out_dir: Path,
             state: Resumable, dataset, sampler: LengthBucketBatchSampler, step: StepFn, tracker,
             num_workers: int = 0, resume: bool = False, seconds_of=None, validation=None) -> StageResult:
    """Train until `stage_config.steps` or SIGTERM; checkpoint every `checkpoint_every` steps and
    at the end. Returns how far it got; rank 0 alone writes checkpoints and logs.

    `validation` (a `miipher2.train.validation.Validation`, optional) scores held-out data at the
    start of a fresh run, whenever it says it is due, and after the last step."""
    done, position, last_metrics = 0, DataPosition(), {}
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        done, position, last_metrics = load_checkpoint(checkpoint, state)
    total = stage_config.steps
    if validation is not None:
        validation.start(done, total)
    progress = _progress_bar(ctx, runtime, stage, total, done)
    window: list[dict[str, float]] = []
    saved_at = done if checkpoint is not None else -1
    stopped = False
    with StopSignal() as stop:
        while done < total and not stopped:
            sampler.set_position(position.epoch, position.batch)
            loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                pin_memory=ctx.device.type == "cuda")
            for batch in loader:
                started = time.perf_counter()
                metrics = step(batch)
                elapsed = time.perf_counter() - started
                done += 1
                position.batch += 1
                audio = seconds_of(batch) if seconds_of else 0.0
                window.append({**metrics, "step_time_s": elapsed,
                               "audio_seconds_per_s": audio * ctx.world_size / max(elapsed, 1e-9)})
                if done % stage_config.log_every == 0 or done == total:
                    last_metrics = mean_across_ranks(ctx, _average(window))
                    window = []
                    if ctx.is_main:
                        tracker.log_metrics({f"{stage}/{k}": v for k, v in last_metrics.items()}, step=done)
                        progress.set_postfix(loss=f"{last_metrics.get('loss', float('nan')):.4f}",
                                             audio_s_per_s=f"{last_metrics['audio_seconds_per_s']:.1f}")
                progress.update(1)
                stopped = any_rank(ctx, stop.requested)
                if validation is not None and not stopped and validation.due(done, total):
                    validation(done)
                if done % stage_config.checkpoint_every == 0 or done == total or stopped:
                    _save(ctx, out_dir, done, state, position, last_metrics, stage_config.keep_checkpoints)
                    saved_at = done
                if stopped or done >= total:
                    break
            else:  # the epoch ran out: the next one starts from its first batch
                position = DataPosition(position.epoch + 1, 0)
    progress.close()
    if saved_at != done:  # e.g. resumed a run that had already finished
        _save(ctx, out_dir, done, state, position, last_metrics, stage_config.keep_checkpoints)
    return StageResult(stage=stage, out_dir=out_dir, step=done, metrics=last_metrics, interrupted=stopped and done < total,
                       checkpoint_dir=latest_checkpoint(out_dir))


def _save(ctx: DistContext, out_dir: Path, done: int, state: Resumable, position: DataPosition,
          metrics: dict[str, float], keep: int) -> None:
    if ctx.is_main:
        save_checkpoint(out_dir, done, state, position, metrics, keep=keep)
    barrier(ctx)  # no rank runs ahead (or exits) before the checkpoint is on disk


def _average(window: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the steps that report it (a GAN's adversarial terms start late)."""
    keys = dict.fromkeys(k for m in window for k in m)
    return {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window) for k in keys}


def _progress_bar(ctx: DistContext, runtime: RuntimeConfig, stage: str, total: int, done: int):
    from tqdm.auto import tqdm

    disable = not (ctx.is_main and runtime.progress) or bool(os.environ.get("MIIPHER2_NO_PROGRESS"))
    return tqdm(total=total, initial=done, desc=stage, unit="step", disable=disable, dynamic_ncols=True)
