"""Each component alone: its function runs with fake artifacts in a temp dir.

The library step it calls is replaced by a recorder, so these tests check the component's own
job (artifacts <-> paths, metadata, metrics, return values) in milliseconds, and that it calls the
real step function with arguments that function accepts. The steps themselves run for real in
tests/pipelines/test_local_run.py.

Input artifacts are shaped like a KFP backend's (tests/kfp_backend.py): extra `display_name` and
`store_session_info` keys, numbers as floats, booleans as 1.0/0.0.
"""

import inspect
import json
from pathlib import Path

import pytest
from kfp import dsl

import components
import miipher2.lineage
import miipher2.steps as steps
from miipher2.launch import Launch
from miipher2.lineage import Lineage
from miipher2.steps import StepResult, ValidatedData
from tests.kfp_backend import STORE_SESSION_INFO, backend_artifact

LINEAGE = Lineage(git_commit="abc123", dataset_revision="v1", dataset_md5="d41d8cd9.dir", kfp_run_id="run-7",
                  backbone="w2v-bert-2.0", experiment="exp", parent_run_id="parent-1")


def artifact(kind, tmp_path: Path, name: str, metadata=None):
    return kind(name=name, uri=str(tmp_path / name), metadata=dict(metadata or {}))


def dataset(tmp_path):
    """The validate step's Dataset output as a later step receives it from a backend."""
    return backend_artifact(dsl.Dataset, tmp_path, "dataset",
                            {"data_root": str(tmp_path / "data"), "files": 9, **LINEAGE.to_metadata()})


@pytest.fixture
def record(monkeypatch):
    """Replace `miipher2.steps.<name>` by `fake`; remember the keyword arguments it got."""
    calls = {}

    def install(name, fake):
        real = getattr(steps, name)

        def recorder(**kwargs):
            inspect.signature(real).bind(**kwargs)  # the real step accepts exactly these arguments
            calls[name] = kwargs
            return fake(**kwargs)

        monkeypatch.setattr(steps, name, recorder)
        return calls

    return install


def test_validate_data_outputs_report_dataset_and_lineage(tmp_path, record):
    def fake(report_dir, **_):
        Path(report_dir, "validation.md").write_text("# Dataset validation: FAIL\n")
        Path(report_dir, "validation.json").write_text('{"ok": false}\n')
        return ValidatedData(ok=False, data_root=str(tmp_path / "data"), lineage=LINEAGE, rows={"train": 3, "test": 1},
                             failures=2, counts={"decode": 2}, files=9, report_json=str(Path(report_dir, "validation.json")),
                             report_markdown=str(Path(report_dir, "validation.md")), elapsed_s=1.5)

    calls = record("validate_data", fake)
    outputs = {name: artifact(kind, tmp_path, name) for name, kind in
               [("dataset", dsl.Dataset), ("report", dsl.Markdown), ("report_json", dsl.Artifact), ("metrics", dsl.Metrics)]}
    ok = components.validate_data.python_func(
        dvc_repo="https://example.com/repo.git", dataset_revision="v1", dvc_remote="s3", workspace=str(tmp_path / "ws"),
        training_preset="demo-cpu", backbone="", overrides=["stage1.steps=2"], experiment="exp", kfp_run_id="run-7",
        **outputs)
    assert ok is False
    assert calls["validate_data"]["revision"] == "v1" and calls["validate_data"]["overrides"] == ["stage1.steps=2"]
    assert Path(outputs["report"].path).read_text().startswith("# Dataset validation: FAIL")
    assert json.loads(Path(outputs["report_json"].path).read_text()) == {"ok": False}
    assert outputs["report"].metadata["ok"] is False
    assert Lineage.from_metadata(outputs["dataset"].metadata) == LINEAGE
    assert outputs["dataset"].metadata["data_root"] == str(tmp_path / "data")
    assert json.loads(Path(outputs["dataset"].path, "dataset.json").read_text())["md5"] == LINEAGE.dataset_md5
    assert outputs["metrics"].metadata["failures"] == 2 and outputs["metrics"].metadata["rows_checked"] == 4


@pytest.mark.parametrize("component, step, output", [
    (components.train_pa, "train_adapters", "adapters"),
    (components.pretrain_vocoder, "pretrain_vocoder", "vocoder"),
])
def test_training_stages_pass_lineage_and_publish_metrics(tmp_path, record, component, step, output):
    calls = record(step, lambda out_dir, **_: StepResult(out_dir=out_dir, metrics={"loss": 0.5}))
    model = artifact(dsl.Model, tmp_path, output)
    metrics = artifact(dsl.Metrics, tmp_path, "metrics")
    launch = Launch(processes=2)
    component.python_func(dataset=dataset(tmp_path), training_preset="demo-cpu", overrides=[],
                          workspace=str(tmp_path / "ws"), launch=launch.to_json(), metrics=metrics, **{output: model})
    got = calls[step]
    assert got["lineage"] == LINEAGE and got["data_root"] == str(tmp_path / "data") and got["out_dir"] == model.path
    assert got["launch"] == launch
    assert Lineage.from_metadata(model.metadata) == LINEAGE
    assert metrics.metadata["loss"] == 0.5 and metrics.metadata["step_seconds"] >= 0


def test_finetune_vocoder_gets_both_earlier_stages(tmp_path, record):
    calls = record("finetune_vocoder", lambda out_dir, **_: StepResult(out_dir=out_dir, metrics={"stage3.mel": 2.0}))
    adapters, vocoder = artifact(dsl.Model, tmp_path, "adapters"), artifact(dsl.Model, tmp_path, "vocoder")
    model, metrics = artifact(dsl.Model, tmp_path, "model"), artifact(dsl.Metrics, tmp_path, "metrics")
    components.finetune_vocoder.python_func(dataset=dataset(tmp_path), adapters=adapters, vocoder=vocoder,
                                            training_preset="demo-cpu", overrides=[], workspace=str(tmp_path),
                                            launch=Launch().to_json(), model=model, metrics=metrics)
    got = calls["finetune_vocoder"]
    assert (got["adapters_dir"], got["vocoder_dir"], got["out_dir"]) == (adapters.path, vocoder.path, model.path)
    assert metrics.metadata["stage3.mel"] == 2.0


def test_evaluate_publishes_reports_and_headline_metrics(tmp_path, record):
    def fake(out_dir, **_):
        Path(out_dir).mkdir(parents=True)
        Path(out_dir, "report.html").write_text("<html>report</html>")
        Path(out_dir, "report.md").write_text("# report")
        return StepResult(out_dir=out_dir, metrics={"pesq": 2.5, "wer": 0.2},
                          files={"html": str(Path(out_dir, "report.html")), "markdown": str(Path(out_dir, "report.md"))})

    calls = record("evaluate", fake)
    outputs = {name: artifact(kind, tmp_path, name) for name, kind in
               [("metrics", dsl.Metrics), ("report_html", dsl.HTML), ("report_markdown", dsl.Markdown),
                ("results", dsl.Artifact)]}
    model = artifact(dsl.Model, tmp_path, "model")
    components.evaluate.python_func(dataset=dataset(tmp_path), model=model, split="test", max_utterances=3, **outputs)
    assert calls["evaluate"]["model_dir"] == model.path and calls["evaluate"]["max_utterances"] == 3
    assert Path(outputs["report_html"].path).read_text() == "<html>report</html>"
    assert Path(outputs["report_markdown"].path).read_text() == "# report"
    assert {k: v for k, v in outputs["metrics"].metadata.items() if k != "step_seconds"} == {"pesq": 2.5, "wer": 0.2}


def test_register_tags_the_version_with_the_evaluation(tmp_path, record):
    calls = record("register", lambda model_name, **_: {"name": model_name, "version": "4"})
    evaluation = backend_artifact(dsl.Metrics, tmp_path, "metrics", {"pesq": 2.5, "wer": 0, "step_seconds": 30.0})
    assert evaluation.metadata["store_session_info"] == STORE_SESSION_INFO  # what crashed float(v) before
    model, metrics = artifact(dsl.Model, tmp_path, "model"), artifact(dsl.Metrics, tmp_path, "metrics")
    registered = components.register.python_func(dataset=dataset(tmp_path), model=model, evaluation=evaluation,
                                                 model_name="miipher2", metrics=metrics)
    assert tuple(registered) == ("miipher2", "4")
    # Only the metrics: not the backend's own keys, not the step's timing.
    assert calls["register"]["metrics"] == {"pesq": 2.5, "wer": 0.0}
    assert calls["register"]["lineage"] == LINEAGE


def test_reject_dataset_fails_with_the_report_in_its_log(tmp_path, capsys):
    report = backend_artifact(dsl.Markdown, tmp_path, "report", {"ok": False})
    Path(report.path).write_text("# Dataset validation: FAIL\n\n- decode: clean/en/a.wav is not audio\n")
    with pytest.raises(steps.InvalidDataset, match="failed validation"):
        components.reject_dataset.python_func(report=report)
    assert "clean/en/a.wav is not audio" in capsys.readouterr().out


@pytest.mark.parametrize("state", ["SUCCEEDED", "FAILED"])
def test_close_pipeline_run_passes_the_final_state(monkeypatch, state):
    seen = []
    monkeypatch.setattr(miipher2.lineage, "close_pipeline_run", lambda *args: seen.append(args))
    status = dsl.PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="runs/7", pipeline_task_name="run",
                                         error_code=None if state == "SUCCEEDED" else 1,
                                         error_message=None if state == "SUCCEEDED" else "Task run failed.")
    components.close_pipeline_run.python_func(experiment="exp", kfp_run_id="run-7", status=status)
    assert seen == [("exp", "run-7", state, "" if state == "SUCCEEDED" else "Task run failed.")]


def test_lineage_missing_from_an_artifact_is_named(tmp_path):
    with pytest.raises(ValueError, match="dataset_md5"):
        Lineage.from_metadata({k: v for k, v in LINEAGE.to_metadata().items() if "md5" not in k})


def test_every_component_runs_in_the_pipeline_image_without_installing_kfp():
    from components._base import IMAGE

    for name in components.__all__:
        container = getattr(components, name).component_spec.implementation.container
        assert container.image == IMAGE
        assert not any("pip install" in part for part in container.command), name
