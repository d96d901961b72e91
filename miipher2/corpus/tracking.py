"""Corpus restorations in MLflow: a run per plan, a child run per shard, the summary at the end.

`plan_corpus` opens the restoration's run (experiment `miipher2-restoration` unless
MLFLOW_EXPERIMENT_NAME says otherwise), tagged with the model it pinned: for a registered model
the name, the version the alias resolved to and that version's logged model (a run input). The
run id goes to `state/mlflow.json` beside the plan, because shard pods and the merge share
nothing else. Each shard then logs a child run; the merge puts the summary's numbers and files on
the parent. Without a tracking URI all of this is skipped; a tracking server that is down is
retried in the background (`miipher2.tracking`) and never stops a restoration.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator

from miipher2.corpus.records import Layout, write_json
from miipher2.lineage import git_commit, image_reference
from miipher2.tracking import Tracker, configured_tracking_uri, tracked_run

EXPERIMENT = "miipher2-restoration"
RUN_FILE = "mlflow.json"
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


def start_restoration_run(plan, layout: Layout) -> str:
    """Open the plan's MLflow run and record its id for the shards and the merge; '' when untracked."""
    if configured_tracking_uri() is None:
        return ""
    commit = git_commit()
    tags = {"pipeline_step": "restoration", "plan_id": plan.plan_id, "git_commit": commit,
            "mlflow.source.git.commit": commit, "image": image_reference(), **model_tags(plan.model)}
    with tracked_run(f"restore {plan.manifest_name} ({plan.plan_id})", system_metrics=False,
                     experiment=os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT,
                     tags={k: v for k, v in tags.items() if v}) as tracker:
        tracker.log_params({"manifest": plan.manifest, "model": plan.model.spec, "model_uri": plan.model.uri,
                            "shards": plan.shards, "rows": plan.rows, "chunk_seconds": plan.settings.chunk_seconds,
                            "overlap_seconds": plan.settings.overlap_seconds,
                            "output_format": plan.settings.output_format})
        model_id = _logged_model_id(plan.model.uri)
        if model_id:
            tracker.log_model_input(model_id)
        run_id = tracker.run_id or ""
    if run_id:
        write_json(layout.state / RUN_FILE, {"plan_id": plan.plan_id, "run_id": run_id})
    return run_id


def model_tags(model) -> dict[str, str]:
    """`model_uri` (pinned), and for a registered version its name and number."""
    tags = {"model_uri": model.uri, "model_identity": model.identity}
    match = _REGISTERED.match(model.uri)
    if match:
        tags.update(registered_model=match["name"], registered_version=match["version"])
    return tags


@contextlib.contextmanager
def shard_run(layout: Layout, plan_id: str, shard: int) -> Iterator[Tracker]:
    """A child run of the plan's run for one shard (inactive when the plan has none)."""
    parent = _recorded_run(layout, plan_id)
    if not parent:
        yield Tracker()
        return
    with tracked_run(f"shard {shard}", parent_run_id=parent, tags={"pipeline_step": "restore_shard", "shard": shard},
                     spool_dir=layout.state / "shards") as tracker:
        yield tracker


def log_shard(tracker: Tracker, result) -> None:
    tracker.log_metrics({"restored": result.restored, "reused": result.reused, "failed": len(result.failed),
                         "restored_input_hours": result.restored_input_s / 3600, "model_seconds": result.restore_s,
                         "step_seconds": result.elapsed_s})


def record_summary(layout: Layout, summary) -> None:
    """The merged corpus's numbers and files on the plan's run."""
    parent = _recorded_run(layout, summary.plan_id)
    if not parent:
        return
    with tracked_run("restoration", run_id=parent, system_metrics=False, spool_dir=layout.state) as tracker:
        metrics = {f"files_{k}": v for k, v in summary.files.items()}
        metrics.update({f"hours_{k}": v for k, v in summary.hours.items()})
        metrics.update({f"{name}_mean": stats["mean"] for name, stats in summary.scores.items() if stats["count"]})
        metrics.update({k: v for k, v in summary.throughput.items()})
        tracker.log_metrics(metrics)
        for path in (layout.summary_markdown, layout.summary_json, summary.output_manifest):
            tracker.log_artifact(path, "restoration")


def _recorded_run(layout: Layout, plan_id: str) -> str:
    if configured_tracking_uri() is None:
        return ""
    try:
        recorded = json.loads((layout.state / RUN_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return recorded.get("run_id", "") if recorded.get("plan_id") == plan_id else ""


def _logged_model_id(uri: str) -> str:
    """The MLflow 3 logged model behind a registered version (shown as the run's model input)."""
    match = _REGISTERED.match(uri)
    if not match:
        return ""
    from miipher2.registry.versions import client, logged_model_id

    with contextlib.suppress(Exception):  # lineage detail: never a reason to stop a restoration
        return logged_model_id(client().get_model_version(match["name"], match["version"]))
    return ""

