"""Completed training stages are kept by what made them, so a later pipeline run reuses them.

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
from pathlib import Path
from typing import Any

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
