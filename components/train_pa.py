"""Step 2a: stage 1, the parallel adapters (GPU)."""

from typing import List

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._base import component


@component
def train_pa(
    dataset: Input[Dataset],
    training_preset: str,
    overrides: List[str],
    workspace: str,
    launch: str,
    adapters: Output[Model],
    metrics: Output[Metrics],
):
    import time

    from miipher2.launch import Launch
    from miipher2.lineage import Lineage
    from miipher2.steps import train_adapters

    started = time.perf_counter()
    lineage = Lineage.from_metadata(dataset.metadata)
    result = train_adapters(data_root=dataset.metadata["data_root"], lineage=lineage,
                            training_preset=training_preset, overrides=overrides, workspace=workspace,
                            launch=Launch.from_json(launch), out_dir=adapters.path)
    adapters.metadata.update(lineage.to_metadata())
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    metrics.log_metric("step_seconds", round(time.perf_counter() - started, 3))
