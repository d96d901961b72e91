"""`miipher2 pipeline compile | submit | run`: arguments reach the pipeline; tokens stay out of output."""

import json

import kfp
import pytest

from miipher2.cli import main
from pipelines.run import normalised


def test_compile_writes_the_golden_pipeline(tmp_path, capsys):
    from pathlib import Path

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
