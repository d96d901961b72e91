"""Restoration step 2 (one pod per shard): restore and score what is not done yet."""

from kfp.dsl import Artifact, Input, Metrics, Output

from components._base import component


@component
def restore_shard(
    plan: Input[Artifact],
    shard: int,
    batch_size: int,
    workers: int,
    metrics: Output[Metrics],
):
    import logging

    from miipher2.corpus import restore_shard as restore

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = restore(plan.metadata["output_dir"], shard, batch_size=batch_size, workers=workers)
    metrics.log_metric("restored", result.restored)
    metrics.log_metric("reused", result.reused)
    metrics.log_metric("failed", len(result.failed))
    metrics.log_metric("restored_input_hours", round(result.restored_input_s / 3600, 6))
    metrics.log_metric("model_seconds", result.restore_s)
    metrics.log_metric("step_seconds", result.elapsed_s)
