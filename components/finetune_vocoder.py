"""Step 3: stage 3, vocoder fine-tuning on adapter-cleaned features (GPU); emits the restorer."""

from typing import List

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._base import component


@component
def finetune_vocoder(
    dataset: Input[Dataset],
    adapters: Input[Model],
    vocoder: Input[Model],
    training_preset: str,
    overrides: List[str],
    workspace: str,
    launch: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    import time

    from miipher2.launch import Launch
    from miipher2.lineage import Lineage
    from miipher2.steps import finetune_vocoder

    started = time.perf_counter()
    lineage = Lineage.from_metadata(dataset.metadata)
    result = finetune_vocoder(data_root=dataset.metadata["data_root"], lineage=lineage,
                              training_preset=training_preset, overrides=overrides, workspace=workspace,
                              launch=Launch.from_json(launch),
                              adapters_dir=adapters.path, vocoder_dir=vocoder.path, out_dir=model.path)
    model.metadata.update(lineage.to_metadata())
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    metrics.log_metric("step_seconds", round(time.perf_counter() - started, 3))
