"""Step 5: the restorer becomes a new MLflow model version with alias `challenger`."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._base import component


@component
def register(
    dataset: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Metrics],
    model_name: str,
    metrics: Output[Metrics],
) -> NamedTuple("Registered", [("model_name", str), ("version", str)]):
    import time
    from collections import namedtuple

    from miipher2.lineage import Lineage
    from miipher2.steps import metric_values, register

    started = time.perf_counter()
    lineage = Lineage.from_metadata(dataset.metadata)
    # The evaluation's headline metrics become version tags and the parent run's metrics. On a
    # KFP backend the artifact's metadata also holds the backend's own keys: read metrics only.
    headline = metric_values(evaluation.metadata, exclude=("step_seconds",))
    registered = register(model_dir=model.path, lineage=lineage, model_name=model_name, metrics=headline)
    metrics.log_metric("step_seconds", round(time.perf_counter() - started, 3))
    return namedtuple("Registered", ["model_name", "version"])(registered["name"], registered["version"])
