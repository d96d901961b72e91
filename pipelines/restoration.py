"""The batch restoration pipeline: plan -> restore every shard in parallel on GPU pods -> merge.

    plan_shards ──► ParallelFor(shard) { restore_shard } ──► merge_shards
       │                   │                                     │
       plan.json           audio + done-records                  restored manifest, summary
       (pinned model)      (skips what is already done)          (JSON + Markdown artifacts)

Everything lands in the run's output folder on the shared workspace volume, not in per-run
artifacts: that is what lets a retried, preempted shard pod (or a rerun into the same folder)
skip files already restored, checked by content hash (see miipher2/corpus/records.py). The
folder is `<workspace>/restored/<corpus>/<KFP run id>` unless `output_dir` names one (relative
to the workspace, or inside it); a second run pointed at a folder whose plan is unfinished is
refused (`miipher2.corpus.PlanConflict`). The plan artifact tells the shard and merge steps
where it is. The shard step is the only one on a GPU.

Cluster settings are the training pipeline's (`pipelines.cluster`): GPU accelerator and limit, GPU pool node selector and tolerations, Secrets as env,
the workspace PVC, retries. `build_restoration_pipeline(None)` leaves them all out; KFP's local
runner ignores them anyway, so the local run executes this very pipeline.

Compile, submit and run it with `pipelines.run`; regenerate the golden compiled copy beside this
file after a deliberate change:
    .venv/bin/miipher2 restoration-pipeline compile -o pipelines/restoration.yaml

(No `from __future__ import annotations` here: KFP reads the pipeline's real annotations.)
"""

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from kfp import dsl

from components._base import name_image
from components.merge_shards import merge_shards
from components.plan_shards import plan_shards
from components.restore_shard import restore_shard
from pipelines.cluster import LOCAL_WORKSPACE, ClusterConfig, on_cpu, on_gpu, with_credentials, with_workspace

PIPELINE_NAME = "miipher2-restoration"
# Shard pods running at once; shards beyond it queue (a compile-time constant in KFP).
DEFAULT_PARALLELISM = 8


def build_restoration_pipeline(cluster: Optional[ClusterConfig] = ClusterConfig(), parallelism: int = DEFAULT_PARALLELISM,
                               workspace: str = LOCAL_WORKSPACE):
    """The pipeline function, with `cluster`'s Kubernetes settings (None: none at all, and the
    steps share `workspace` instead of the cluster's workspace volume)."""
    workspace = cluster.workspace_mount if cluster else workspace

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Miipher-2: restore a corpus (manifest, local or S3) with a registered model, "
                              "sharded over GPU pods, resumable; DNSMOS-scored restored manifest and summary.")
    def restoration_pipeline(
        manifest: str,
        model: str = "models:/miipher2@champion",
        output_dir: str = "",
        shards: int = 8,
        batch_size: int = 16,
        workers: int = 4,
        chunk_seconds: float = 30.0,
        overlap_seconds: float = 1.0,
        output_format: str = "wav",
    ):
        planned = plan_shards(manifest=manifest, model=model, output_dir=output_dir, workspace=workspace,
                              kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, shards=shards, chunk_seconds=chunk_seconds,
                              overlap_seconds=overlap_seconds, output_format=output_format,
                              ).set_display_name("plan shards")
        with dsl.ParallelFor(planned.outputs["Output"], parallelism=parallelism, name="shards") as shard:
            restored = restore_shard(plan=planned.outputs["plan"], shard=shard, batch_size=batch_size,
                                     workers=workers).set_display_name("restore shard")
        merged = merge_shards(plan=planned.outputs["plan"]).after(restored).set_display_name("merge shards")

        # The work is idempotent by content hash on the workspace; a KFP cache hit would skip
        # the check itself (and could serve a manifest whose audio has since changed).
        for task in (planned, restored, merged):
            task.set_caching_options(False)
            name_image(task)
        if cluster is not None:
            for task in (planned, restored, merged):
                with_credentials(task, cluster)  # S3 for the corpus, MLflow for the model
                with_workspace(task, cluster)
            # A preempted shard pod is retried and resumes: its finished files have records.
            on_gpu(restored, cluster)
            for task in (planned, merged):
                on_cpu(task, cluster)

    return restoration_pipeline


restoration_pipeline = build_restoration_pipeline()


def run_restoration_locally(params: dict, pipeline_root, workspace) -> tuple[Path, dict[str, Any], float]:
    """Run the pipeline here (KFP SubprocessRunner, this interpreter) with its workspace at
    `workspace`; never raises for a failed step.

    Returns (this run's folder, task -> executor output, wall seconds); tasks inside the shard
    loop are named by their folder, e.g. `for-loop-1-iteration-0/restore-shard`.
    """
    from pipelines.run import run_pipeline_locally

    cluster = dataclasses.replace(ClusterConfig(), workspace_mount=str(Path(workspace).absolute()))
    run_dir, wall = run_pipeline_locally(build_restoration_pipeline(cluster), params, pipeline_root, PIPELINE_NAME,
                                         ignore=(r"Task '.*': settings .* have no effect in the current local runner",))
    outputs = {path.parent.relative_to(run_dir).as_posix(): json.loads(path.read_text())
               for path in sorted(run_dir.rglob("executor_output.json"))}
    return run_dir, outputs, wall
