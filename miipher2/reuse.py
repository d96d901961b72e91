"""Completed training stages are kept by what made them, so a later pipeline run reuses them.

    stage = trained_stage("train_pa", "stage1", config=config, data_root=..., lineage=lineage,
                          workspace="/workspace", launch=Launch(), tracker=tracker)
    stage.reused, stage.work_dir, stage.result["weights"]

A stage's output is fully determined by: the dataset's content (its DVC hash), the resolved
training config (the fields that shape learning, `learning_settings`), the library code that
trains it (`code_version`) and, for stage 3, the weights of the stages it starts from. Their hash
(`stage_key`) names the stage's directory on the shared workspace,
`<workspace>/stages/<step>/<key>`; a run whose key names a complete directory (one holding
`result.json`) publishes it instead of training again, and a retried step (same key) resumes its
checkpoints there. A changed config, dataset or training code gives a new key: a fresh stage.

KFP's own cache is not used for this (see docs/pipeline.md): it would also skip the step's
MLflow child run and lineage, and it keys on the task's inputs, not on the dataset's content.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miipher2.files import atomic_write_text

# Fields that change how a stage runs, not what it learns: a run may differ in them and still
# reuse (or resume) another's stage.
NOT_LEARNING = frozenset({"runtime.device", "runtime.progress", "runtime.threads", "cache.enabled", "cache.dir",
                          "data.num_workers"})
# Library code whose changes can change a stage's output (what the code version hashes).
_CODE = ("audio.py", "data", "model", "train")
RESULT_FILE = "result.json"
ORIGIN_FILE = "origin.json"


def learning_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config (`TrainConfig.to_dict()`) without the fields in `NOT_LEARNING`, flattened."""
    return {key: value for key, value in _flatten(config).items() if key not in NOT_LEARNING}


def code_version() -> str:
    """A hash of the training code's source (miipher2's audio, data, model and train code and presets).

    Content, not a git commit: it is the same in a checkout with local edits and in the image
    (where there is no .git), and it ignores changes elsewhere (evaluation, pipelines, docs)."""
    root = Path(__file__).resolve().parent
    files = []
    for name in _CODE:
        path = root / name
        files += [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".py", ".yaml")]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_key(step: str, *, dataset_md5: str, config: Mapping[str, Any], inputs: Mapping[str, str] | None = None,
              code: str | None = None) -> str:
    """The name of `step`'s output for this dataset, config, code and input weights (`inputs`: name -> digest)."""
    description = {"step": step, "dataset_md5": dataset_md5, "config": learning_settings(config),
                   "inputs": dict(inputs or {}), "code": code or code_version()}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]


def weights_digest(directory: str | os.PathLike) -> str:
    """A hash of every `*.safetensors` file in a stage output (what a later stage starts from)."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.safetensors")):
        with open(path, "rb") as handle:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:20]


def completed_stage(work_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The recorded result of a finished stage in `work_dir` (its weights all present), else None."""
    record = Path(work_dir) / RESULT_FILE
    try:
        result = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    weights = {name: Path(work_dir) / name for name in result.get("weights", {})}
    if result.get("interrupted") or not weights or not all(p.is_file() for p in weights.values()):
        return None
    return {**result, "weights": weights}


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class TrainedStage:
    """A finished training stage on the workspace: trained now, or reused from an earlier run."""

    work_dir: Path
    result: dict[str, Any]   # its result.json (weights: name -> path)
    reused: bool


def trained_stage(step: str, stage: str, *, config, data_root: str, lineage, workspace: str, launch, tracker,
                  earlier: Mapping[str, str] | None = None) -> TrainedStage:
    """`stage` (stage1..3) for pipeline step `step`: reused when a run already finished it for the
    same dataset, config, code and earlier stages (`earlier`: name -> their output folders), else
    trained now into `<workspace>/stages/<step>/<key>`, continuing any checkpoints there, the way
    `launch` says (`miipher2.launch.run_stage`).

    The stage folder is locked while this step works on it: a concurrent run with the same key
    waits, then reuses the result instead of training the stage a second time."""
    from miipher2.launch import run_stage
    from miipher2.locking import exclusive_lock

    earlier = dict(earlier or {})
    key = stage_key(step, dataset_md5=lineage.dataset_md5, config=config.to_dict(),
                    inputs={name: weights_digest(path) for name, path in earlier.items()})
    work_dir = Path(workspace) / "stages" / step / key
    tracker.set_tags({"stage_key": key, "stage_dir": str(work_dir)})

    def waiting(holder: dict) -> None:
        print(f"{step}: {work_dir} is being trained by {holder or 'another run'}; waiting to reuse it", flush=True)

    with exclusive_lock(work_dir / ".lock", owner={"kfp_run_id": lineage.kfp_run_id}, on_wait=waiting):
        done = completed_stage(work_dir)
        if done is not None:
            origin = _read_json(work_dir / ORIGIN_FILE)
            tracker.set_tags({"reused": True, **{f"trained_by.{k}": v for k, v in origin.items()}})
            print(f"{step}: reusing {work_dir}, trained by KFP run {origin.get('kfp_run_id', '?')}", flush=True)
            return TrainedStage(work_dir, done, reused=True)
        if not (work_dir / ORIGIN_FILE).exists():
            atomic_write_text(work_dir / ORIGIN_FILE, json.dumps({
                "kfp_run_id": lineage.kfp_run_id, "mlflow_run_id": tracker.run_id or "", "git_commit": lineage.git_commit}))
        run_stage(stage, config, data_root, work_dir, launch, tracker=tracker, earlier=earlier,
                  job_name=f"miipher2-{stage}-{key[:12]}",
                  labels={"miipher2/stage-key": key, "miipher2/kfp-run-id": lineage.kfp_run_id})
        done = completed_stage(work_dir)
        if done is None:
            # Fail the step: KFP retries it (set_retry) and the retry continues from the checkpoints.
            raise RuntimeError(f"{stage} stopped before completing (SIGTERM?) after checkpointing in {work_dir}; "
                               "a retry continues from there")
        return TrainedStage(work_dir, done, reused=False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
