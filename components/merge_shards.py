"""Restoration step 3: the restored-corpus manifest and its summary, from every shard's result."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from components._base import component


@component
def merge_shards(
    plan: Input[Artifact],
    restored_manifest: Output[Dataset],
    summary: Output[Markdown],
    summary_json: Output[Artifact],
    metrics: Output[Metrics],
):
    import shutil

    from miipher2.corpus import Layout, merge_shards

    output_dir = plan.metadata["output_dir"]
    result = merge_shards(output_dir)
    layout = Layout(output_dir)
    shutil.copyfile(result.output_manifest, restored_manifest.path)
    shutil.copyfile(layout.summary_markdown, summary.path)
    shutil.copyfile(layout.summary_json, summary_json.path)
    # The audio stays in output_dir (the workspace volume); the artifact says where.
    restored_manifest.metadata.update({"data_root": str(layout.root), "manifest": result.output_manifest,
                                       "plan_id": result.plan_id, "model_uri": result.model["uri"]})
    for name, value in result.files.items():
        metrics.log_metric(f"files_{name}", value)
    for name, value in result.hours.items():
        metrics.log_metric(f"hours_{name}", value)
    for name, stats in result.scores.items():
        if stats["count"]:
            metrics.log_metric(f"{name}_mean", stats["mean"])
