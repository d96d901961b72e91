"""`miipher2 pipeline compile | submit | run`: arguments reach the pipeline; tokens stay out of output."""

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


class FakeClient:
    created = []

    def __init__(self, host, existing_token=None):
        self.host, self.token = host, existing_token

    def create_run_from_pipeline_func(self, pipeline_func, arguments, run_name=None, experiment_name=None,
                                      enable_caching=None):
        FakeClient.created.append({"host": self.host, "token": self.token, "arguments": arguments,
                                   "experiment": experiment_name, "caching": enable_caching,
                                   "pipeline": pipeline_func.name})

        class Run:
            run_id = "run-123"

        return Run()


def test_submit_passes_parameters_and_token(monkeypatch, capsys):
    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("KFP_TOKEN", "secret-token-value")
    FakeClient.created.clear()
    code = main(["pipeline", "submit", "--host", "https://kfp.example.com", "--dvc-repo", "https://git.example/r.git",
                 "--dataset-revision", "v2", "--set", "stage1.steps=10", "--set", "stage2.steps=5",
                 "--backbone", "mhubert-147", "--kfp-experiment", "nightly"])
    assert code == 0
    [created] = FakeClient.created
    assert created["host"] == "https://kfp.example.com" and created["token"] == "secret-token-value"
    assert created["pipeline"] == "miipher2-training" and created["caching"] is False
    assert created["arguments"]["dataset_revision"] == "v2"
    assert created["arguments"]["overrides"] == ["stage1.steps=10", "stage2.steps=5"]
    assert created["arguments"]["backbone"] == "mhubert-147" and created["arguments"]["training_preset"] == "paper"
    assert "workspace" not in created["arguments"]  # the PVC mount default applies
    output = capsys.readouterr()
    assert "run-123" in output.out and "secret-token-value" not in output.out + output.err


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
    assert len(executors) == 6  # one per step
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
