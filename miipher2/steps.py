"""The training pipeline's steps as plain functions: paths and values in, small results out.

Each KFP component (`components/`) maps its artifacts to paths and calls exactly one of these;
a notebook or a script can call them just the same. Each step logs into its own MLflow child
run of the pipeline's parent run (`miipher2.lineage`), so the MLflow UI shows one pipeline run
as one parent with a child per step, all tagged with code and data versions.

Where things live: `workspace` is the shared volume (a PVC on the cluster, a directory locally).
The dataset is materialised once per DVC version at `<workspace>/datasets/<md5>` (equal md5 =
equal bytes, so later runs of the same version reuse it), the clean-feature cache at
`<workspace>/cache`, and each training stage trains under `<workspace>/stages/<step>/<key>`, the
key naming what the stage depends on (`miipher2.reuse`): a retried (preempted) step resumes its
checkpoints there, and a later run with the same dataset, config and code reuses the result.
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
from miipher2.launch import Launch
from miipher2.lineage import Lineage, git_commit, image_reference, kfp_run_url, start_pipeline_run, step_run
from miipher2.reuse import TrainedStage, trained_stage
from miipher2.tracking import TrackingWarning, require_tracking_server
from miipher2.tracking.runs import without_credentials

# Keys a KFP backend adds to the metadata of every artifact it records (its driver's
# RecordArtifact, backend/src/v2/metadata/client.go): they are not ours and not metrics.
KFP_ARTIFACT_KEYS = frozenset({"display_name", "store_session_info"})


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
    tracking server stops the pipeline before any GPU is requested; the config is resolved here for
    the same reason. It also fetches the backbone into the shared Hub cache once, before the
    training steps start side by side.
    """
    from miipher2.data.validate import validate_dataset
    from miipher2.data.versioning import materialise_dataset, platform_remote
    from miipher2.hub import prefetch

    started = time.perf_counter()
    require_tracking_server()
    config = training_config(training_preset, overrides, backbone)
    info = materialise_dataset(repo, revision or None, Path(workspace) / "datasets", remote=remote or None)
    remote_used = platform_remote(remote or None)[0] or "(default)"
    prefetch(config.encoder.source)
    lineage = Lineage(git_commit=git_commit(), dataset_revision=revision or "HEAD", dataset_md5=info.md5,
                      kfp_run_id=kfp_run_id, backbone=config.encoder.preset, experiment=experiment,
                      dataset_commit=info.commit, dataset_source=without_credentials(repo), image=image_reference(),
                      kfp_run_url=kfp_run_url(kfp_run_id))

    Path(report_dir).mkdir(parents=True, exist_ok=True)
    config_file = Path(report_dir) / "config.yaml"
    atomic_write_text(config_file, config.to_yaml())
    lineage = start_pipeline_run(lineage, f"training {kfp_run_id}", params={
        "dataset_revision": lineage.dataset_revision, "dvc_remote": remote_used,
        "training_preset": training_preset, **config.tracked_params(also=_override_keys(overrides))},
        dataset=_dataset_input(info.path, lineage, "train"), artifacts=[config_file])

    hashes = Path(report_dir) / "dataset_files.json"
    _write_json(hashes, {"repo": lineage.dataset_source, "revision": lineage.dataset_revision,
                         "commit": lineage.dataset_commit, "md5": info.md5, "files": info.files})
    with step_run("validate", lineage) as tracker:
        report = validate_dataset(info.path, report_dir=report_dir)
        tracker.log_params({"dataset_revision": lineage.dataset_revision, "dvc_remote": remote_used,
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
                   workspace: str, out_dir: str, launch: Launch | None = None) -> StepResult:
    """Stage 1: parallel adapters on (degraded -> clean) features."""
    return _train_and_publish("train_pa", "stage1", data_root=data_root, lineage=lineage,
                              training_preset=training_preset, overrides=overrides, workspace=workspace,
                              out_dir=out_dir, launch=launch)


def pretrain_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, out_dir: str, launch: Launch | None = None) -> StepResult:
    """Stage 2: the vocoder on clean features; independent of stage 1, so it runs beside it."""
    return _train_and_publish("pretrain_vocoder", "stage2", data_root=data_root, lineage=lineage,
                              training_preset=training_preset, overrides=overrides, workspace=workspace,
                              out_dir=out_dir, launch=launch)


def _train_and_publish(step: str, stage_name: str, *, data_root: str, lineage: Lineage, training_preset: str,
                       overrides: Sequence[str], workspace: str, out_dir: str, launch: Launch | None) -> StepResult:
    """A stage-1 or stage-2 step: train (or reuse) the stage, publish its final weights."""
    config = _stage_config(training_preset, overrides, lineage, workspace)
    with step_run(step, lineage, spool_dir=_spool_dir(workspace, lineage, step)) as tracker:
        _log_config(tracker, config, stage_name, overrides, data_root, lineage)
        stage = trained_stage(step, stage_name, config=config, data_root=data_root, lineage=lineage,
                              workspace=workspace, launch=launch or Launch(), tracker=tracker)
        return _publish_stage(stage, out_dir, tracker)


def finetune_vocoder(*, data_root: str, lineage: Lineage, training_preset: str, overrides: Sequence[str],
                     workspace: str, adapters_dir: str, vocoder_dir: str, out_dir: str,
                     launch: Launch | None = None) -> StepResult:
    """Stage 3: the vocoder on adapter-cleaned features; `out_dir` receives the complete restorer."""
    from miipher2.train.stages import export_model

    config = _stage_config(training_preset, overrides, lineage, workspace)
    with step_run("finetune_vocoder", lineage, spool_dir=_spool_dir(workspace, lineage, "finetune_vocoder")) as tracker:
        _log_config(tracker, config, "stage3", overrides, data_root, lineage)
        stage = trained_stage("finetune_vocoder", "stage3", config=config, data_root=data_root, lineage=lineage,
                              workspace=workspace, launch=launch or Launch(), tracker=tracker,
                              earlier={"stage1": adapters_dir, "stage2": vocoder_dir})
        staging = Path(f"{out_dir}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        export_model(config, adapters_dir, stage.work_dir, staging)
        _replace_dir(staging, Path(out_dir))
        tracker.log_artifact(out_dir, "model")
    return StepResult(out_dir=str(out_dir), metrics=_stage_metrics(stage, "stage3."))


def _stage_config(training_preset: str, overrides: Sequence[str], lineage: Lineage, workspace: str):
    """The run's config for a training step; its backbone read offline when validate cached it."""
    from miipher2.hub import offline_if_cached

    config = training_config(training_preset, overrides, lineage.backbone, workspace)
    offline_if_cached(config.encoder.source)
    return config
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


def _spool_dir(workspace: str, lineage: Lineage, step: str) -> Path:
    """Where `step` spools its MLflow records while the server is away, keyed by the KFP run: a
    retry of the step (same run) sends what the killed attempt left."""
    from miipher2.data.paths import path_component

    return Path(workspace) / "runs" / path_component(lineage.kfp_run_id) / step


def _publish_stage(stage: TrainedStage, out_dir: str, tracker) -> StepResult:
    """Copy a finished stage's final weights and records (not its checkpoints) into the output artifact."""
    staging = Path(f"{out_dir}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    records = [stage.work_dir / name for name in ("config.yaml", "encoder.json", "result.json")]
    for path in [*stage.result["weights"].values(), *records]:
        shutil.copy2(path, staging / Path(path).name)
    _replace_dir(staging, Path(out_dir))
    tracker.log_artifact(out_dir, "final")
    return StepResult(out_dir=str(out_dir), metrics=_stage_metrics(stage, f"{stage.result['stage']}."))


def _stage_metrics(stage: TrainedStage, prefix: str) -> dict[str, float]:
    """The stage's last logged metrics, its validation summary (first and best held-out scores), and
    whether it was reused (1.0) or trained by this step (0.0)."""
    from miipher2.train.validation import summary_metrics

    metrics = {**stage.result.get("metrics", {}), **summary_metrics(stage.result.get("validation", {}))}
    return {**_numbers(metrics, prefix=prefix), "reused": float(stage.reused)}


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


class InvalidDataset(RuntimeError):
    """The dataset failed validation: the pipeline run must end failed."""


def reject_dataset(report_markdown: str) -> None:
    """Fail on purpose, printing the validation report: an invalid dataset is a failed run."""
    print(Path(report_markdown).read_text(), flush=True)
    raise InvalidDataset("the dataset failed validation (report above; also the validate step's `report` "
                         "artifact): nothing was trained or registered")


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


def metric_values(metadata: dict[str, Any], exclude: Sequence[str] = ()) -> dict[str, float]:
    """The metrics in a KFP Metrics artifact's metadata: finite numbers under our own keys.

    A backend-recorded artifact also carries `display_name` and `store_session_info` (text) and
    returns every number as a float, booleans as 1.0/0.0: anything not a number is left out.
    """
    numbers = {k: v for k, v in metadata.items()
               if k not in KFP_ARTIFACT_KEYS and k not in exclude and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return _numbers(numbers)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
