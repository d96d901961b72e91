"""Step 2b: stage 2, vocoder pretraining on clean features (GPU; runs beside stage 1)."""

from typing import List

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._base import component


@component
def pretrain_vocoder(
    dataset: Input[Dataset],
    training_preset: str,
    overrides: List[str],
    workspace: str,
    launch: str,
    vocoder: Output[Model],
    metrics: Output[Metrics],
):
    import time

    from miipher2.launch import Launch
    from miipher2.lineage import Lineage
    from miipher2.steps import pretrain_vocoder

    started = time.perf_counter()
    lineage = Lineage.from_metadata(dataset.metadata)
    result = pretrain_vocoder(data_root=dataset.metadata["data_root"], lineage=lineage,
                              training_preset=training_preset, overrides=overrides, workspace=workspace,
                              launch=Launch.from_json(launch), out_dir=vocoder.path)
    vocoder.metadata.update(lineage.to_metadata())
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    metrics.log_metric("step_seconds", round(time.perf_counter() - started, 3))
