"""The training pipeline's steps as plain functions: paths and values in, small results out.

Each KFP component (`components/`) maps its artifacts to paths and calls exactly one of these;
a notebook or a script can call them just the same. Each step logs into its own MLflow child
run of the pipeline's parent run (`miipher2.lineage`), so the MLflow UI shows one pipeline run
as one parent with a child per step, all tagged with code and data versions.

Where things live: `workspace` is the shared volume (a PVC on the cluster, a directory locally).
The dataset is materialised once per DVC version at `<workspace>/datasets/<md5>` (equal md5 =
equal bytes, so later runs of the same version reuse it), the clean-feature cache at
`<workspace>/cache`, and each training stage checkpoints under `<workspace>/runs/<kfp run>/<step>`,
which is what lets a retried (preempted) step resume instead of starting over.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miipher2.lineage import Lineage, git_commit, start_pipeline_run, step_run

_SAFE_CHARS = "-_."


@dataclass
class ValidatedData:
    ok: bool
    data_root: str
    lineage: Lineage
    rows: dict[str, int]
    failures: int
    counts: dict[str, int]
    files: int
    report_json: str
    report_markdown: str
    elapsed_s: float


@dataclass
class StepResult:
    out_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # role -> path of what the step produced


def training_config(training_preset: str, overrides: Sequence[str], backbone: str = "", workspace: str | None = None):
    """The run's TrainConfig: a preset, then the backbone choice, then the user's overrides.

    The feature cache goes to the shared workspace so that parallel stages and later runs with
    the same encoder reuse it.
    """
    from miipher2.train.config import load_config

    items = ([f"encoder.preset={backbone}"] if backbone else []) + list(overrides)
    if workspace:
        items.append(f"cache.dir={Path(workspace) / 'cache'}")
    return load_config(training_preset, items)


def validate_data(*, repo: str, revision: str, remote: str, workspace: str, report_dir: str, training_preset: str,
                  overrides: Sequence[str], backbone: str, experiment: str, kfp_run_id: str) -> ValidatedData:
    """Fetch `revision` of the dataset through DVC, open the pipeline's MLflow parent run, validate.

    Runs before anything else so that a bad dataset or a bad config stops the pipeline before
    any GPU is requested; the config is resolved here for the same reason.
    """
    from miipher2.data.validate import validate_dataset
    from miipher2.data.versioning import dataset_md5, fetch_dataset

    started = time.perf_counter()
    config = training_config(training_preset, overrides, backbone)
    md5 = dataset_md5(repo, revision or None, remote=remote or None)
    info = fetch_dataset(repo, revision or None, Path(workspace) / "datasets" / _safe_name(md5), remote=remote or None)
    lineage = Lineage(git_commit=git_commit(), dataset_revision=revision or "HEAD", dataset_md5=info.md5,
                      kfp_run_id=kfp_run_id, backbone=config.encoder.preset, experiment=experiment)
    lineage = start_pipeline_run(lineage, f"training {kfp_run_id}", params={
        "dataset_revision": lineage.dataset_revision, "dvc_remote": remote or "(default)",
        "training_preset": training_preset, "backbone": config.encoder.preset, "overrides": list(overrides),
        "config": config.to_dict()})

    Path(report_dir).mkdir(parents=True, exist_ok=True)
    hashes = Path(report_dir) / "dataset_files.json"
    _write_json(hashes, {"repo": _display_repo(repo), "revision": lineage.dataset_revision, "md5": info.md5,
                         "files": info.files})
    with step_run("validate", lineage) as tracker:
        report = validate_dataset(info.path, report_dir=report_dir)
        tracker.log_params({"dataset_revision": lineage.dataset_revision, "dvc_remote": remote or "(default)",
                            "dataset_files": len(info.files)})
        tracker.log_metrics({"rows_checked": report.rows_checked, "failures": len(report.failures),
                             "failed_rows": report.failed_rows, **{f"rows_{s}": n for s, n in report.rows.items()}})
        tracker.set_tags({"dataset_ok": report.ok})
        for path in (*report.report_paths.values(), hashes):
            tracker.log_artifact(path, "validation")
    return ValidatedData(ok=report.ok, data_root=str(info.path), lineage=lineage, rows=dict(report.rows),
                         failures=len(report.failures), counts=report.counts, files=len(info.files),
                         report_json=report.report_paths["json"], report_markdown=report.report_paths["markdown"],
                         elapsed_s=time.perf_counter() - started)


def train_adapters(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                   workspace: str, out_dir: str) -> StepResult:
    """Stage 1: parallel adapters on (degraded -> clean) features. Resumes from its checkpoints."""
    from miipher2.train import train_stage1

    return _train_stage("train_pa", train_stage1, data_root, lineage, training_preset, overrides, workspace, out_dir)


def pretrain_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, out_dir: str) -> StepResult:
    """Stage 2: the vocoder on clean features; independent of stage 1, so it runs beside it."""
    from miipher2.train import train_stage2

    return _train_stage("pretrain_vocoder", train_stage2, data_root, lineage, training_preset, overrides,
                        workspace, out_dir)


def finetune_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, adapters_dir: str, vocoder_dir: str, out_dir: str) -> StepResult:
    """Stage 3: the vocoder on adapter-cleaned features; writes the complete restorer to `out_dir`."""
    from miipher2.train import train_stage3

    return _train_stage("finetune_vocoder", train_stage3, data_root, lineage, training_preset, overrides,
                        workspace, out_dir, adapters=adapters_dir, vocoder=vocoder_dir)


def _train_stage(step: str, train_fn, data_root: str, lineage: Lineage, training_preset: str,
                 overrides: Sequence[str], workspace: str, out_dir: str, **inputs: str) -> StepResult:
    config = training_config(training_preset, overrides, lineage.backbone, workspace)
    # Keyed by the KFP run: a retry of this step (same run) resumes; another run starts afresh.
    work_dir = Path(workspace) / "runs" / _safe_name(lineage.kfp_run_id) / step
    with step_run(step, lineage) as tracker:
        result = train_fn(config, data_root, work_dir, tracker=tracker, **inputs)
        final = Path(result.final_dir if hasattr(result, "final_dir") else result)
        tracker.log_artifact(final, "final")
    _copy_tree(final, Path(out_dir))
    metrics = dict(getattr(result, "metrics", {}) or {})
    return StepResult(out_dir=str(out_dir), metrics={k: float(v) for k, v in metrics.items()})


def evaluate(*, model_dir: str, data_root: str, lineage: Lineage, split: str, out_dir: str,
             max_utterances: int = 0) -> StepResult:
    """Objective metrics of the restorer against the clean references, and the HTML/Markdown report."""
    from miipher2.evaluate import evaluate_model, write_report

    with step_run("evaluate", lineage) as tracker:
        result = evaluate_model(model_dir, data_root, split=split, out_dir=out_dir,
                                max_utterances=max_utterances or None, tracker=tracker)
        html, markdown = write_report(result, out_dir)
        metrics = {k: float(v) for k, v in result.headline.items() if v is not None}
        tracker.log_metrics(metrics)
        tracker.log_artifact(out_dir, "evaluation")
    return StepResult(out_dir=str(out_dir), metrics=metrics, files={"html": str(html), "markdown": str(markdown)})


def register(*, model_dir: str, lineage: Lineage, model_name: str, metrics: dict[str, float]) -> dict[str, Any]:
    """Register the restorer as a new MLflow model version with alias `challenger`.

    The headline metrics also go onto the parent run, so two pipeline runs compare side by side.
    """
    from miipher2.registry import register_model

    with step_run("register", lineage) as tracker:
        version = register_model(model_dir, model_name, tags={**lineage.tags(), **{f"metric.{k}": v for k, v in metrics.items()}},
                                 run_id=tracker.run_id)
        tracker.set_tags({"registered_model": model_name, "registered_version": version.version})
    with step_run("pipeline", lineage, into_parent=True) as parent:
        parent.log_metrics(metrics)
        parent.set_tags({"registered_model": model_name, "registered_version": version.version})
    return {"name": model_name, "version": str(version.version), "aliases": list(getattr(version, "aliases", []))}


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy a directory's files into `dest` through a temp directory, so `dest` is whole or absent."""
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _safe_name(text: str) -> str:
    """A path component made of `text` (KFP run ids, DVC hashes): nothing that can escape a directory."""
    cleaned = "".join(c if c.isalnum() or c in _SAFE_CHARS else "_" for c in text).strip(".")
    if not cleaned:
        raise ValueError(f"cannot make a directory name out of {text!r}")
    return cleaned


def _display_repo(repo: str) -> str:
    """The repository as recorded: a URL without any user:password@ part."""
    if "://" in repo and "@" in repo.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = repo.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return repo
