"""Step 4: objective evaluation of the restorer, with an HTML and a Markdown report."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components._base import component


@component
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    split: str,
    max_utterances: int,
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_markdown: Output[Markdown],
    results: Output[Artifact],
):
    import shutil
    import time

    from miipher2.lineage import Lineage
    from miipher2.steps import evaluate

    started = time.perf_counter()
    lineage = Lineage.from_metadata(dataset.metadata)
    result = evaluate(model_dir=model.path, data_root=dataset.metadata["data_root"], lineage=lineage, split=split,
                      out_dir=results.path, max_utterances=max_utterances)
    shutil.copyfile(result.files["html"], report_html.path)
    shutil.copyfile(result.files["markdown"], report_markdown.path)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    metrics.log_metric("step_seconds", round(time.perf_counter() - started, 3))
