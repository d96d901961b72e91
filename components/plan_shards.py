"""Restoration step 1: read the manifest, pin the model version, split the rows into shards."""

from typing import List

from kfp.dsl import Artifact, Output

from components._base import component


@component
def plan_shards(
    manifest: str,
    model: str,
    output_dir: str,
    shards: int,
    chunk_seconds: float,
    overlap_seconds: float,
    output_format: str,
    plan: Output[Artifact],
) -> List[int]:
    """The shard indices to fan out over; the plan itself stays in `output_dir` for the shards."""
    import shutil

    from miipher2.corpus import Layout, Settings, plan_corpus

    result = plan_corpus(manifest, model, output_dir, shards,
                         Settings(chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds, output_format=output_format))
    shutil.copyfile(Layout(output_dir).plan, plan.path)
    plan.metadata.update({"plan_id": result.plan_id, "model_uri": result.model.uri, "rows": result.rows,
                          "rejected": len(result.rejected), "output_dir": output_dir})
    return list(range(result.shards))
