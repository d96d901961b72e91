"""Lineage: the facts that tie one pipeline run's MLflow runs to the code, data and image they used.

A pipeline run has one MLflow parent run; each step logs into a child run of it. Every one of
those runs carries the same tags (`Lineage.tags`): git commit, dataset revision with the commit
it resolved to and the `data.dvc` md5, the image the steps ran in, the KFP run id and its URL,
the backbone preset. The validate step builds the `Lineage`, opens the parent run and stores the
lineage in its Dataset artifact's metadata; every later step reads it back from the artifact it
consumes, so lineage travels with the data instead of through ad-hoc parameters.

Where the facts come from at run time:
- `MIIPHER2_GIT_COMMIT`: baked into the image at build time (there is no .git inside);
- `MIIPHER2_IMAGE`: the image reference the pipeline was compiled with (a digest when CI built
  it); the pipeline sets it on every step, and it is recorded only inside our image (where
  `MIIPHER2_GIT_COMMIT` is baked in): a local run does not run in any image;
- `KFP_UI_URL`: the Kubeflow Pipelines UI's address (optional key of the `miipher2-settings`
  ConfigMap); the run's URL is `<KFP_UI_URL>/#/runs/details/<run id>`.

This module knows nothing about KFP: a notebook can use `step_run` just as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miipher2.tracking import Tracker, TrackingWarning, configured_tracking_uri, server_reachable, tracked_run

# Baked into the pipeline image at build time (infra/image/Dockerfile), where there is no .git.
GIT_COMMIT_ENV = "MIIPHER2_GIT_COMMIT"
IMAGE_ENV, KFP_UI_ENV = "MIIPHER2_IMAGE", "KFP_UI_URL"
SOURCE_NAME = "miipher2 training pipeline"
_METADATA_PREFIX = "lineage."


def git_commit(repo: str | os.PathLike | None = None) -> str:
    """The code's commit: the image's baked-in value, else `git rev-parse HEAD` (+`-dirty`), else 'unknown'."""
    baked = os.environ.get(GIT_COMMIT_ENV)
    if baked:
        return baked
    where = Path(repo) if repo else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        # Tracked files only: untracked scratch files don't change what the code does.
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def image_reference() -> str:
    """The image these steps run in, as the pipeline names it; '' outside our image."""
    return os.environ.get(IMAGE_ENV, "") if os.environ.get(GIT_COMMIT_ENV) else ""


def kfp_run_url(kfp_run_id: str) -> str:
    """A link to the KFP run in its UI, when `KFP_UI_URL` says where that is; else ''."""
    base = os.environ.get(KFP_UI_ENV, "").strip().rstrip("/")
    return f"{base}/#/runs/details/{kfp_run_id}" if base and kfp_run_id else ""


@dataclass(frozen=True)
class Lineage:
    git_commit: str
    dataset_revision: str
    dataset_md5: str
    kfp_run_id: str
    backbone: str
    experiment: str
    # Optional (empty when unknown), so that artifacts written before they existed still load.
    dataset_commit: str = ""   # the git commit `dataset_revision` resolved to
    dataset_source: str = ""   # the DVC repository (without credentials)
    image: str = ""            # image reference, a digest when the pipeline was compiled against one
    kfp_run_url: str = ""
    parent_run_id: str = ""    # empty while tracking is off (no tracking URI) or before the parent exists

    def tags(self) -> dict[str, str]:
        """The tags every run of the pipeline carries (empty facts left out); `mlflow.source.git.commit`
        is what the UI shows."""
        tags = {
            "git_commit": self.git_commit,
            "mlflow.source.git.commit": self.git_commit,
            # What the UI's Source column shows (else the KFP executor's file name).
            "mlflow.source.name": SOURCE_NAME,
            "mlflow.source.type": "JOB",
            "dataset_revision": self.dataset_revision,
            "dataset_commit": self.dataset_commit,
            "dataset_md5": self.dataset_md5,
            "dataset_source": self.dataset_source,
            "image": self.image,
            "kfp_run_id": self.kfp_run_id,
            "kfp_run_url": self.kfp_run_url,
            "backbone": self.backbone,
        }
        return {k: v for k, v in tags.items() if v}

    def version_tags(self) -> dict[str, str]:
        """The same facts for a registered model version (MLflow's own `mlflow.*` tags left out)."""
        return {k: v for k, v in self.tags().items() if not k.startswith("mlflow.")}

    def to_metadata(self) -> dict[str, str]:
        return {_METADATA_PREFIX + k: str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Lineage":
        """Read back what `to_metadata` stored in an artifact's metadata; names what is missing."""
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        missing = [f.name for f in fields if _METADATA_PREFIX + f.name not in metadata
                   and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"artifact metadata lacks lineage fields {missing}: was it produced by the validate step?")
        return cls(**{n: str(metadata.get(_METADATA_PREFIX + n, "")) for n in names})


def start_pipeline_run(lineage: Lineage, run_name: str, params: Mapping[str, Any] | None = None,
                       dataset=None, artifacts: Sequence[str | os.PathLike] = ()) -> Lineage:
    """Open the pipeline's MLflow parent run; returns the lineage with its run id (empty when tracking is off).

    The parent run is closed right away: it is a folder for the step runs and the place the last
    step reports headline metrics to (`step_run(..., into_parent=True)`), not a process. A
    configured tracking server that cannot open it is an error (`TrackingUnavailable`): every
    later step would otherwise run untracked and registration would fail after the training.
    `dataset` (an `mlflow.data` dataset) becomes the run's training input; `artifacts` are files
    to attach (the resolved training config).
    """
    with tracked_run(run_name, experiment=lineage.experiment, tags={**lineage.tags(), "pipeline_step": "pipeline"},
                     system_metrics=False, required=True) as tracker:
        tracker.log_params(params or {})
        if dataset is not None:
            tracker.log_dataset(dataset, context="training")
        for path in artifacts:
            tracker.log_artifact(path)
        return dataclasses.replace(lineage, parent_run_id=tracker.run_id or "")


@contextlib.contextmanager
def step_run(step: str, lineage: Lineage, *, into_parent: bool = False,
             spool_dir: str | os.PathLike | None = None) -> Iterator[Tracker]:
    """A child run of the pipeline's parent run, tagged with the lineage; or the parent itself (`into_parent`).

    `spool_dir` keeps what MLflow cannot take yet (the step's checkpoint directory: a retried
    step delivers it)."""
    tags = {**lineage.tags(), "pipeline_step": step}
    parent = lineage.parent_run_id or None
    if into_parent and parent:
        with tracked_run(step, run_id=parent, system_metrics=False, spool_dir=spool_dir) as tracker:
            yield tracker
        return
    with tracked_run(step, experiment=None if parent else lineage.experiment, parent_run_id=parent,
                     tags=tags, spool_dir=spool_dir) as tracker:
        yield tracker


# KFP's final task states (PipelineTaskFinalStatus.state) as MLflow run statuses.
_RUN_STATUS = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}


def close_pipeline_run(experiment: str, kfp_run_id: str, state: str, error: str = "") -> str | None:
    """End the pipeline's MLflow parent run with the pipeline's final `state` (KFP's SUCCEEDED,
    FAILED, CANCELED...): FINISHED, KILLED, or FAILED for anything else; tagged `pipeline_state`
    (and `pipeline_error`). Called by the pipeline's exit handler, which sees no step outputs,
    so the parent run is found by its tags. Returns its id; None when tracking is off or the
    run never opened one (it stopped before validation). Tracking failures only warn."""
    uri = configured_tracking_uri()
    if uri is None or not server_reachable(uri):
        return None
    import mlflow

    status = _RUN_STATUS.get(state.upper(), "FAILED")
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        if "'" in kfp_run_id:
            raise ValueError(f"unexpected KFP run id {kfp_run_id!r}")
        runs = client.search_runs([found.experiment_id],
                                  filter_string=f"tags.kfp_run_id = '{kfp_run_id}' and tags.pipeline_step = 'pipeline'")
        for run in runs:
            client.set_tag(run.info.run_id, "pipeline_state", state)
            if error:
                client.set_tag(run.info.run_id, "pipeline_error", error[:5000])
            client.set_terminated(run.info.run_id, status=status)
    except Exception as err:  # noqa: BLE001 — a tracking failure must not fail the exit handler
        warnings.warn(f"could not close the MLflow parent run of KFP run {kfp_run_id} ({type(err).__name__}: {err})",
                      TrackingWarning, stacklevel=2)
        return None
    return runs[0].info.run_id if runs else None

