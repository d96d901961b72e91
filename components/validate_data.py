"""Step 1: the dataset at a DVC revision, validated; opens the pipeline's MLflow parent run."""

from typing import List

from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Output

from components._base import component


@component
def validate_data(
    dvc_repo: str,
    dataset_revision: str,
    dvc_remote: str,
    workspace: str,
    training_preset: str,
    backbone: str,
    overrides: List[str],
    experiment: str,
    kfp_run_id: str,
    dataset: Output[Dataset],
    report: Output[Markdown],
    report_json: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """True when every check passed. The Dataset artifact records the version and where it lies."""
    import json
    import os
    import shutil
    import tempfile

    from miipher2.steps import validate_data

    with tempfile.TemporaryDirectory() as report_dir:
        result = validate_data(repo=dvc_repo, revision=dataset_revision, remote=dvc_remote, workspace=workspace,
                               report_dir=report_dir, training_preset=training_preset, overrides=overrides,
                               backbone=backbone, experiment=experiment, kfp_run_id=kfp_run_id)
        shutil.copyfile(result.report_markdown, report.path)
        shutil.copyfile(result.report_json, report_json.path)
    # The bytes stay on the shared workspace (one copy per DVC version); the artifact says which.
    os.makedirs(dataset.path, exist_ok=True)
    with open(os.path.join(dataset.path, "dataset.json"), "w") as handle:
        json.dump({"data_root": result.data_root, "md5": result.lineage.dataset_md5, "rows": result.rows}, handle)
    dataset.metadata.update({"data_root": result.data_root, "files": result.files, **result.lineage.to_metadata()})
    report.metadata["ok"] = result.ok
    metrics.log_metric("failures", result.failures)
    metrics.log_metric("rows_checked", sum(result.rows.values()))
    metrics.log_metric("step_seconds", round(result.elapsed_s, 3))
    return result.ok
