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
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miipher2.files import atomic_write_text
from miipher2.lineage import Lineage, git_commit, image_reference, kfp_run_url, start_pipeline_run, step_run
from miipher2.tracking import TrackingWarning, require_tracking_server
from miipher2.tracking.runs import without_credentials

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

    Runs before anything else so that a bad dataset, a bad config or a configured but unreachable
    tracking server stops the pipeline before any GPU is requested.
    """
    from miipher2.data.validate import validate_dataset
    from miipher2.data.versioning import dataset_md5, fetch_dataset

    started = time.perf_counter()
    require_tracking_server()
    config = training_config(training_preset, overrides, backbone)
    md5 = dataset_md5(repo, revision or None, remote=remote or None)
    info = fetch_dataset(repo, revision or None, Path(workspace) / "datasets" / _safe_name(md5), remote=remote or None)
    lineage = Lineage(git_commit=git_commit(), dataset_revision=revision or "HEAD", dataset_md5=info.md5,
                      kfp_run_id=kfp_run_id, backbone=config.encoder.preset, experiment=experiment,
                      dataset_commit=info.commit, dataset_source=without_credentials(repo), image=image_reference(),
                      kfp_run_url=kfp_run_url(kfp_run_id))

    Path(report_dir).mkdir(parents=True, exist_ok=True)
    config_file = Path(report_dir) / "config.yaml"
    atomic_write_text(config_file, config.to_yaml())
    lineage = start_pipeline_run(lineage, f"training {kfp_run_id}", params={
        "dataset_revision": lineage.dataset_revision, "dvc_remote": remote or "(default)",
        "training_preset": training_preset, **config.tracked_params(also=_override_keys(overrides))},
        dataset=_dataset_input(info.path, lineage, "train"), artifacts=[config_file])

    hashes = Path(report_dir) / "dataset_files.json"
    _write_json(hashes, {"repo": lineage.dataset_source, "revision": lineage.dataset_revision,
                         "commit": lineage.dataset_commit, "md5": info.md5, "files": info.files})
    with step_run("validate", lineage) as tracker:
        report = validate_dataset(info.path, report_dir=report_dir)
        tracker.log_params({"dataset_revision": lineage.dataset_revision, "dvc_remote": remote or "(default)",
                            "dataset_files": len(info.files)})
        tracker.log_metrics({"rows_checked": report.rows_checked, "failures": len(report.failures),
                             "failed_rows": report.failed_rows, **{f"rows_{s}": n for s, n in report.rows.items()}})
        tracker.set_tags({"dataset_ok": report.ok})
        _log_dataset(tracker, info.path, lineage, "train", "validation")
        for path in (*report.report_paths.values(), hashes):
            tracker.log_artifact(path, "validation")
    return ValidatedData(ok=report.ok, data_root=str(info.path), lineage=lineage, rows=dict(report.rows),
                         failures=len(report.failures), counts=report.counts, files=len(info.files),
                         report_json=report.report_paths["json"], report_markdown=report.report_paths["markdown"],
                         elapsed_s=time.perf_counter() - started)


def train_adapters(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                   workspace: str, out_dir: str) -> StepResult:
    """Stage 1: parallel adapters on (degraded -> clean) features. Resumes from its checkpoints."""
    from miipher2.train.stages import train_stage1

    config = training_config(training_preset, overrides, lineage.backbone, workspace)
    work_dir = _work_dir(workspace, lineage, "train_pa")
    with step_run("train_pa", lineage, spool_dir=work_dir) as tracker:
        _log_config(tracker, config, "stage1", overrides, data_root, lineage)
        result = train_stage1(config, data_root, work_dir, tracker=tracker, resume=True)
        return _publish_stage(result, out_dir, tracker)


def pretrain_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, out_dir: str) -> StepResult:
    """Stage 2: the vocoder on clean features; independent of stage 1, so it runs beside it."""
    from miipher2.train.stages import train_stage2

    config = training_config(training_preset, overrides, lineage.backbone, workspace)
    work_dir = _work_dir(workspace, lineage, "pretrain_vocoder")
    with step_run("pretrain_vocoder", lineage, spool_dir=work_dir) as tracker:
        _log_config(tracker, config, "stage2", overrides, data_root, lineage)
        result = train_stage2(config, data_root, work_dir, tracker=tracker, resume=True)
        return _publish_stage(result, out_dir, tracker)


def finetune_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, adapters_dir: str, vocoder_dir: str, out_dir: str) -> StepResult:
    """Stage 3: the vocoder on adapter-cleaned features; `out_dir` receives the complete restorer."""
    from miipher2.train.stages import export_model, train_stage3

    config = training_config(training_preset, overrides, lineage.backbone, workspace)
    work_dir = _work_dir(workspace, lineage, "finetune_vocoder")
    with step_run("finetune_vocoder", lineage, spool_dir=work_dir) as tracker:
        _log_config(tracker, config, "stage3", overrides, data_root, lineage)
        result = train_stage3(config, data_root, work_dir, stage1_dir=adapters_dir, stage2_dir=vocoder_dir,
                              tracker=tracker, resume=True)
        _require_complete(result)
        staging = Path(f"{out_dir}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        export_model(config, adapters_dir, work_dir, staging)
        _replace_dir(staging, Path(out_dir))
        tracker.log_artifact(out_dir, "model")
    return StepResult(out_dir=str(out_dir), metrics=_numbers(result.metrics, prefix="stage3."))


def _log_config(tracker, config, stage: str, overrides: Sequence[str], data_root: str, lineage: Lineage) -> None:
    """What a reviewer compares stage runs by: a few parameters (and every overridden one), the
    training data; the whole config.yaml follows as an artifact."""
    tracker.log_params(config.tracked_params(stage, also=_override_keys(overrides)))
    _log_dataset(tracker, data_root, lineage, config.data.split, "training")


def _override_keys(overrides: Sequence[str]) -> list[str]:
    """`stage1.lr=0.01` -> `stage1.lr`: a deliberate change is a parameter of its own (as set, once)."""
    return [item.split("=", 1)[0].strip() for item in overrides if "=" in item]


def _log_dataset(tracker, data_root, lineage: Lineage, split: str, context: str) -> None:
    dataset = _dataset_input(data_root, lineage, split)
    if dataset is not None:
        tracker.log_dataset(dataset, context=context)


def _dataset_input(data_root, lineage: Lineage, split: str):
    """The split's manifest as an MLflow dataset with its DVC source; None when untracked or absent."""
    from miipher2.data.manifest import manifest_path
    from miipher2.tracking import configured_tracking_uri

    if configured_tracking_uri() is None or not manifest_path(data_root, split).is_file():
        return None
    from miipher2.data.mlflow_dataset import dvc_dataset

    try:
        return dvc_dataset(data_root, split, repo=lineage.dataset_source, revision=lineage.dataset_revision,
                           commit=lineage.dataset_commit, md5=lineage.dataset_md5)
    except Exception as err:  # noqa: BLE001 — an unreadable manifest is the validation report's to explain
        warnings.warn(f"{manifest_path(data_root, split)}: not logged as an MLflow dataset ({err})", TrackingWarning,
                      stacklevel=2)
        return None


def _work_dir(workspace: str, lineage: Lineage, step: str) -> Path:
    """Checkpoints of `step`, keyed by the KFP run: a retry (same run) resumes, another run starts afresh."""
    return Path(workspace) / "runs" / _safe_name(lineage.kfp_run_id) / step


def _publish_stage(result, out_dir: str, tracker) -> StepResult:
    """Copy a finished stage's final weights and records (not its checkpoints) into the output artifact."""
    _require_complete(result)
    staging = Path(f"{out_dir}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    records = [Path(result.out_dir) / name for name in ("config.yaml", "encoder.json", "result.json")]
    for path in [*result.weights.values(), *records]:
        shutil.copy2(path, staging / Path(path).name)
    _replace_dir(staging, Path(out_dir))
    tracker.log_artifact(out_dir, "final")
    return StepResult(out_dir=str(out_dir), metrics=_numbers(result.metrics, prefix=f"{result.stage}."))


def _require_complete(result) -> None:
    if result.interrupted:
        # Fail the step: KFP retries it (set_retry) and the retry resumes from this checkpoint.
        raise RuntimeError(f"{result.stage} stopped at step {result.step} (SIGTERM) after checkpointing "
                           f"{result.checkpoint_dir}; a retry resumes from there")


def evaluate(*, model_dir: str, data_root: str, lineage: Lineage, split: str, out_dir: str,
             max_utterances: int = 0) -> StepResult:
    """Objective metrics of the restorer and the baselines, and the HTML/Markdown report."""
    from miipher2.evaluate.report import CHART_FILE
    from miipher2.evaluate.run import available_cpus, evaluate_model

    with step_run("evaluate", lineage) as tracker:
        # Tracking off inside: this step's child run gets the metrics, with the lineage tags.
        # One single-threaded scoring process per CPU of the pod (or of this machine, locally).
        result = evaluate_model(model_dir, data_root, split=split, out_dir=out_dir,
                                max_utterances=max_utterances or None, workers=available_cpus(), tracking=False)
        overall = result.aggregates[result.aggregates["group_by"] == "all"]
        tracker.log_params({"split": split, "max_utterances": max_utterances,
                            "utterances": result.table["utt_id"].nunique(), "systems": ",".join(result.systems)})
        _log_dataset(tracker, data_root, lineage, split, "evaluation")
        tracker.log_metrics(_numbers({f"{r.system}.{r.metric}": r.mean for r in overall.itertuples()}))
        tracker.log_artifact(out_dir, "evaluation")
    # The report also goes where reviewers compare pipeline runs: on the parent run, at its top
    # level (MLflow's run comparison shows the files two runs have in common side by side).
    with step_run("evaluate", lineage, into_parent=True) as parent:
        for path in (result.markdown_path, Path(out_dir) / CHART_FILE, result.html_path):
            if path is not None and Path(path).is_file():
                parent.log_artifact(path)
    return StepResult(out_dir=str(out_dir), metrics=_numbers(result.headline),
                      files={"html": str(result.html_path), "markdown": str(result.markdown_path)})


def register(*, model_dir: str, lineage: Lineage, model_name: str, metrics: dict[str, float]) -> dict[str, str]:
    """Register the restorer as a new MLflow model version with alias `challenger`.

    The registration run is a child of the pipeline's parent run like every step's, tagged with
    the lineage; the version gets the lineage as tags too. The headline metrics also go onto the
    parent run, so that two pipeline runs compare side by side in the MLflow UI.
    """
    import mlflow

    from miipher2.registry import register_restorer

    with step_run("register", lineage, into_parent=True) as parent:
        version = register_restorer(model_dir, model_name, dataset_revision=lineage.dataset_revision,
                                    git_commit=lineage.git_commit, metrics=metrics, experiment=lineage.experiment)
        client = mlflow.MlflowClient()
        for key, value in {**lineage.tags(), "pipeline_step": "register"}.items():
            client.set_tag(version.tags["source_run"], key, value)
        for key, value in lineage.version_tags().items():
            client.set_model_version_tag(model_name, version.version, key, value)
        parent.log_metrics(metrics)
        parent.set_tags({"registered_model": model_name, "registered_version": version.version})
    return {"name": model_name, "version": str(version.version)}


def _replace_dir(staging: Path, dest: Path) -> None:
    """Move a completed `staging` directory to `dest`, so `dest` is always whole or absent."""
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(staging, dest)


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numeric entries only: KFP Metrics and MLflow both refuse NaN and text."""
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _safe_name(text: str) -> str:
    """A path component made of `text` (KFP run ids, DVC hashes): nothing that can escape a directory."""
    cleaned = "".join(c if c.isalnum() or c in _SAFE_CHARS else "_" for c in text).strip(".")
    if not cleaned:
        raise ValueError(f"cannot make a directory name out of {text!r}")
    return cleaned
