"""Restoration step 1: read the manifest, pin the model, split the rows into shards."""

from typing import List

from kfp.dsl import Artifact, Output

from components._base import component


@component
def plan_shards(
    manifest: str,
    model: str,
    output_dir: str,
    workspace: str,
    kfp_run_id: str,
    shards: int,
    chunk_seconds: float,
    overlap_seconds: float,
    output_format: str,
    plan: Output[Artifact],
) -> List[int]:
    """The shard indices to fan out over. The plan itself stays in the run's output folder on the
    workspace (named in the `plan` artifact's metadata), where the shard and merge steps find it."""
    import shutil

    from miipher2.corpus import Layout, Settings, plan_corpus, run_output_dir

    out = run_output_dir(workspace, manifest, kfp_run_id, output_dir)
    result = plan_corpus(manifest, model, out, shards,
                         Settings(chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, output_format=output_format))
    shutil.copyfile(Layout(out).plan, plan.path)
    plan.metadata.update({"plan_id": result.plan_id, "model_uri": result.model.uri, "rows": result.rows,
                          "rejected": len(result.rejected), "output_dir": str(out)})
    return list(range(result.shards))
