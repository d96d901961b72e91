"""`miipher2 pipeline compile | submit | run`: arguments reach the pipeline; tokens stay out of output."""

import json
from pathlib import Path

import kfp
import pytest

from miipher2.cli import main
from pipelines.run import normalised


def test_compile_writes_the_golden_pipeline(tmp_path, capsys):
    out = tmp_path / "training.yaml"
    assert main(["pipeline", "compile", "-o", str(out)]) == 0
    golden = Path(__file__).resolve().parents[2] / "pipelines" / "training.yaml"
    assert normalised(out.read_text()) == normalised(golden.read_text())
    assert str(out) in capsys.readouterr().out


class FakeHealthz:
    """kfp.Client's generated healthz API, answering as a backend of `version` does."""

    def __init__(self, version: str):
        self.version = version

    def healthz_service_get_healthz(self, _preload_content=True):
        class Raw:
            data = json.dumps({"commit_sha": "abc", "tag_name": self.version, "multi_user": True}).encode()

        return Raw()


class FakeClient:
    created = []
    version = "2.17.0"

    def __init__(self, host, existing_token=None, namespace="kubeflow"):
        self.host, self.token, self.namespace = host, existing_token, namespace
        self._healthz_api = FakeHealthz(FakeClient.version)

    def create_run_from_pipeline_func(self, pipeline_func, arguments, run_name=None, experiment_name=None,
                                      namespace=None, service_account=None, enable_caching=None):
        FakeClient.created.append({"host": self.host, "token": self.token, "arguments": arguments,
                                   "experiment": experiment_name, "caching": enable_caching,
                                   "pipeline": pipeline_func.name, "namespace": namespace,
                                   "service_account": service_account})

        class Run:
            run_id = "run-123"

        return Run()


def test_submit_passes_parameters_and_token(monkeypatch, capsys):
    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("KFP_TOKEN", "secret-token-value")
    FakeClient.created.clear()
    code = main(["pipeline", "submit", "--host", "https://kfp.example.com", "--dvc-repo", "https://git.example/r.git",
                 "--dataset-revision", "v2", "--set", "stage1.steps=10", "--set", "stage2.steps=5",
                 "--backbone", "mhubert-147", "--kfp-experiment", "nightly", "--namespace", "miipher2",
                 "--service-account", "miipher2-pipeline"])
    assert code == 0
    [created] = FakeClient.created
    assert created["host"] == "https://kfp.example.com" and created["token"] == "secret-token-value"
    assert created["pipeline"] == "miipher2-training" and created["caching"] is False
    assert created["arguments"]["dataset_revision"] == "v2"
    assert created["arguments"]["overrides"] == ["stage1.steps=10", "stage2.steps=5"]
    assert created["arguments"]["backbone"] == "mhubert-147" and created["arguments"]["training_preset"] == "paper"
    assert "workspace" not in created["arguments"]  # the PVC mount path, fixed when compiled
    assert (created["namespace"], created["service_account"]) == ("miipher2", "miipher2-pipeline")
    output = capsys.readouterr()
    assert "run-123" in output.out and "secret-token-value" not in output.out + output.err


def test_submit_refuses_a_backend_older_than_2_15(monkeypatch, capsys):
    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setattr(FakeClient, "version", "2.14.3")
    FakeClient.created.clear()
    code = main(["pipeline", "submit", "--host", "https://kfp.example.com", "--dvc-repo", "https://git.example/r.git"])
    assert code == 2 and FakeClient.created == []
    err = capsys.readouterr().err
    assert "version 2.14.3" in err and ">= 2.15" in err and "optional" in err


def test_submit_needs_a_dataset_repository():
    with pytest.raises(SystemExit):
        main(["pipeline", "submit", "--host", "https://kfp.example.com"])


def test_run_requires_local():
    with pytest.raises(SystemExit):
        main(["pipeline", "run"])


def test_compile_pins_every_step_to_an_image_digest(tmp_path, capsys):
    import yaml

    from components._base import IMAGE

    pinned = "ghcr.io/miipher2/miipher2@sha256:" + "0123456789abcdef" * 4
    out = tmp_path / "training.yaml"
    assert main(["pipeline", "compile", "-o", str(out), "--image", pinned]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 8  # one per step: six, the rejecting branch and the exit handler
    assert {executor["container"]["image"] for executor in executors.values()} == {pinned}
    # Nothing else changed: the image is the only difference from the unpinned compile.
    golden = Path(__file__).resolve().parents[2] / "pipelines" / "training.yaml"
    assert normalised(out.read_text()).replace(pinned, IMAGE) == normalised(golden.read_text())
    assert pinned in capsys.readouterr().out


@pytest.mark.parametrize("reference", ["ghcr.io/miipher2/miipher2@sha256:abc", "ghcr.io/miipher2/miipher2@md5:" + "0" * 64,
                                       "ghcr.io/Miipher2/miipher2:1", "miipher2 latest"])
def test_compile_refuses_what_is_not_an_image_reference(tmp_path, capsys, reference):
    out = tmp_path / "training.yaml"
    assert main(["pipeline", "compile", "-o", str(out), "--image", reference]) == 2
    assert "not an image reference" in capsys.readouterr().err and not out.exists()


def test_upload_adds_a_version_creating_the_pipeline_once(monkeypatch, tmp_path, capsys):
    package = tmp_path / "training.yaml"
    package.write_text("pipelineInfo: {name: miipher2-training}\n")
    existing, calls = {}, []

    class UploadClient:
        def __init__(self, host, existing_token=None):
            calls.append(("client", host, existing_token))

        def get_pipeline_id(self, name):
            return existing.get(name)

        def upload_pipeline(self, path, pipeline_name, description=None):
            calls.append(("pipeline", path, pipeline_name))
            existing[pipeline_name] = "p-1"
            return type("Pipeline", (), {"pipeline_id": "p-1"})()

        def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id, description=None):
            calls.append(("version", path, pipeline_version_name, pipeline_id))
            return type("Version", (), {"pipeline_version_id": f"v-{pipeline_version_name}"})()

    monkeypatch.setattr(kfp, "Client", UploadClient)
    monkeypatch.setenv("KFP_TOKEN", "secret-token-value")
    for commit in ("abc123", "def456"):
        assert main(["pipeline", "upload", "--host", "https://kfp.example.com", "--package", str(package),
                     "--version", commit]) == 0
    assert calls == [("client", "https://kfp.example.com", "secret-token-value"),
                     ("pipeline", str(package), "miipher2-training"),
                     ("version", str(package), "abc123", "p-1"),
                     ("client", "https://kfp.example.com", "secret-token-value"),
                     ("version", str(package), "def456", "p-1")]
    output = capsys.readouterr().out
    assert "version 'def456' (v-def456) of pipeline miipher2-training (p-1)" in output
    assert "secret-token-value" not in output


def test_local_run_summary_shows_what_each_stage_learnt():
    """The lines `pipeline run --local` prints from the training steps' KFP metrics."""
    from miipher2.cli.pipeline import learning_summary

    def metrics(**values):
        return {"artifacts": {"metrics": {"artifacts": [{"name": "metrics", "metadata": values}]}}}

    outputs = {"train-pa": metrics(**{"stage1.val_best_step": 60.0, "stage1.val_first/loss": 2.25,
                                      "stage1.val_best/loss": 1.9, "stage1.val_first/gap_closed": 0.0,
                                      "stage1.val_best/gap_closed": 0.083, "stage1.loss": 2.0}),
               "pretrain-vocoder": metrics(**{"stage2.val_best_step": 30.0, "stage2.val_first/mel": 1.9,
                                              "stage2.val_best/mel": 1.2, "stage2.val_first/mrstft": 3.6,
                                              "stage2.val_best/mrstft": 2.5}),
               "finetune-vocoder": metrics(**{"stage3.loss": 1.0})}  # trained without validation: no line
    assert learning_summary(outputs) == [
        "adapters (stage 1): loss 2.250 -> 1.900, gap closed 0.0% -> 8.3% (best at step 60)",
        "vocoder on clean features (stage 2): mel 1.900 -> 1.200, mrstft 3.600 -> 2.500 (best at step 30)"]
