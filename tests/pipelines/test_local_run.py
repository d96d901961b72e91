"""The whole training pipeline, run by KFP's local runner on a tiny corpus, against real services.

Started here, on loopback ports: an S3 server (moto) holding both the DVC remote and MLflow's
artifact store, and a real `mlflow server` whose artifacts are proxied to that S3. The dataset
reaches the pipeline only through DVC from S3 (the repository's own cache is emptied first).
Two dataset revisions of one repository: a good one trains (every stage under torchrun with 2
gloo processes, as `gpus_per_step=2` runs it on a cluster), evaluates and registers, and a
second run of it reuses the trained stages; a corrupt one stops at validation with its report,
nothing is trained or registered, and the run fails, its MLflow parent run marked FAILED.
"""

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cluster import ClusterConfig
from tests.servers import moto_s3_endpoint, new_dataset_repo, running_mlflow_server
from tests.train.conftest import TINY_MODEL

pytestmark = pytest.mark.slow

BUCKET = "miipher2-e2e"
MODEL = "miipher2-e2e"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
# The smallest run that still exercises every stage, checkpoint and resume path.
TINY = ["stage1.steps=2", "stage2.steps=2", "stage3.steps=2", "stage1.checkpoint_every=1",
        "stage2.checkpoint_every=1", "stage3.checkpoint_every=1", "stage1.batch_size=2", "stage2.batch_size=2",
        "stage3.batch_size=2", "stage2.segment_frames=8", "stage3.segment_frames=8", *TINY_MODEL]


@pytest.fixture(scope="module")
def s3():
    import boto3

    with moto_s3_endpoint() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


@pytest.fixture(scope="module")
def environment(s3):
    """Credentials and endpoints the way cluster pods get them from Secrets: environment only."""
    endpoint, _ = s3
    patch = pytest.MonkeyPatch()
    for key, value in {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint}.items():
        patch.setenv(key, value)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, environment):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with running_mlflow_server(tmp_path_factory.mktemp("mlflow"), f"s3://{BUCKET}/mlflow") as url:
        patch = pytest.MonkeyPatch()
        patch.setenv("MLFLOW_TRACKING_URI", url)  # for the pipeline's step processes
        # For this process too, whatever URI earlier tests left in mlflow's global; restored after.
        patch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mlflow.set_tracking_uri(url)
        yield url
        patch.undo()


@pytest.fixture(scope="module")
def dataset_repo(tmp_path_factory, s3, environment):
    """A git + DVC repository with two dataset revisions pushed to S3: `good` and `corrupt` (HEAD)."""
    from miipher2.data.demo import DemoConfig, build_demo

    endpoint, _ = s3
    repo = tmp_path_factory.mktemp("dataset-repo")
    run = new_dataset_repo(repo, "s3", f"s3://{BUCKET}/dvc")
    run("dvc", "remote", "modify", "s3", "endpointurl", endpoint)  # an address, not a credential
    build_demo(repo / "data", DemoConfig.tiny(librivox_dir=None))
    run("dvc", "add", "-q", "data")
    run("dvc", "push", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "good dataset")
    good = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()
    # The corrupt revision: one training utterance replaced by text that merely ends in .wav.
    victim = sorted((repo / "data" / "clean").rglob("*.wav"))[0]
    victim.unlink()
    victim.write_text("not audio at all\n")
    run("dvc", "add", "-q", "data")
    run("dvc", "push", "-q")
    run("git", "commit", "-qam", "corrupt dataset")
    # Only the S3 remote holds the data now: the pipeline must fetch it through DVC.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    return repo, good


def _params(repo: Path, revision: str, **extra):
    return {"dvc_repo": str(repo), "dataset_revision": revision, "dvc_remote": "s3", "training_preset": "demo-cpu",
            # Two utterances: the evaluate step scores them in its worker pool, as `make demo` does.
            "overrides": TINY, "experiment": "e2e", "model_name": MODEL, "eval_max_utterances": 2, **extra}


def _data_dvc_md5(repo: Path, revision: str) -> str:
    import yaml

    text = subprocess.run(["git", "show", f"{revision}:data.dvc"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout
    return yaml.safe_load(text)["outs"][0]["md5"]


def test_full_pipeline_trains_evaluates_registers_with_lineage(tmp_path, dataset_repo, mlflow_server, s3):
    import mlflow

    from pipelines.run import run_local

    repo, good = dataset_repo
    subprocess.run(["git", "tag", "-f", "good-data", good], cwd=repo, check=True, capture_output=True)
    result = run_local(_params(repo, "good-data"), tmp_path / "kfp", tmp_path / "workspace",
                       ClusterConfig(gpus_per_step=2))
    assert result.ok, f"pipeline failed; see {result.run_dir}"
    assert result.valid is True
    assert set(result.step_seconds) == {"validate-data", "train-pa", "pretrain-vocoder", "finetune-vocoder",
                                        "evaluate", "register"}
    for stage, step in (("stage1", "train_pa"), ("stage2", "pretrain_vocoder"), ("stage3", "finetune_vocoder")):
        (stage_dir,) = (tmp_path / "workspace" / "stages" / step).iterdir()
        assert json.loads((stage_dir / "result.json").read_text())["step"] == 2, stage
    assert 0 < result.kfp_overhead_s < result.wall_s
    assert "<html" in result.artifact("evaluate", "report_html").read_text().lower()
    from miipher2.cli.pipeline import learning_summary

    assert len(learning_summary(result.outputs)) == 3  # every stage validated on held-out pairs
    model_dir = result.artifact("finetune-vocoder", "model")
    assert {"config.yaml", "adapters.safetensors", "vocoder.safetensors"} <= {p.name for p in model_dir.iterdir()}

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("pipeline_step") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    lineage = {k: parent.data.tags[k] for k in ("git_commit", "dataset_revision", "dataset_commit", "dataset_md5",
                                                 "kfp_run_id", "backbone")}
    assert lineage["dataset_revision"] == "good-data" and lineage["dataset_commit"] == good  # a tag moves; a commit not
    assert lineage["dataset_md5"] == _data_dvc_md5(repo, good)
    assert lineage["backbone"] == "w2v-bert-2.0" and lineage["kfp_run_id"] and lineage["git_commit"] != "unknown"

    children = {r.data.tags["pipeline_step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"validate", "train_pa", "pretrain_vocoder", "finetune_vocoder", "evaluate", "register"}
    for step, run in children.items():
        assert {k: run.data.tags.get(k) for k in lineage} == lineage, step
        assert run.info.status == "FINISHED", step
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline_state"] == "SUCCEEDED"  # the exit handler
    for step in ("train_pa", "pretrain_vocoder", "finetune_vocoder"):  # torchrun's rank 0 logged into the step's run
        assert children[step].data.params["world_size"] == "2", step
    assert children["validate"].data.metrics["failures"] == 0
    assert "stage1/loss" in children["train_pa"].data.metrics
    assert "stage2/loss" in children["pretrain_vocoder"].data.metrics
    assert "miipher2.pesq" in children["evaluate"].data.metrics
    assert "pesq" in parent.data.metrics  # headline metrics on the parent: runs compare side by side
    # The data is each run's MLflow dataset input (the UI's Dataset column), with its DVC source.
    for run, context in ((parent, "training"), (children["train_pa"], "training"), (children["evaluate"], "evaluation")):
        (entry,) = run.inputs.dataset_inputs
        assert entry.dataset.digest == lineage["dataset_md5"] and entry.dataset.source_type == "dvc"
        assert json.loads(entry.dataset.source)["commit"] == good
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == context
    # A reviewer compares parent runs: the settings as params (each override its own), the report there too.
    assert parent.data.params["stage1.steps"] == "2" and parent.data.params["stage1.checkpoint_every"] == "1"
    assert "overrides" not in parent.data.params and len(parent.data.params) < 40
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "config.yaml", "report.md", "headline.png", "report.html"}
    experiment = client.get_experiment_by_name("e2e")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs

    # Artifacts went through the server's proxy into S3 and come back.
    downloads = tmp_path / "downloads"
    report = mlflow.artifacts.download_artifacts(run_id=children["validate"].info.run_id,
                                                 artifact_path="validation/validation.md", dst_path=str(downloads))
    assert "Dataset validation: OK" in Path(report).read_text()
    files = Path(mlflow.artifacts.download_artifacts(run_id=children["finetune_vocoder"].info.run_id,
                                                     artifact_path="model", dst_path=str(downloads)))
    assert (files / "vocoder.safetensors").stat().st_size > 0
    html = mlflow.artifacts.download_artifacts(run_id=children["evaluate"].info.run_id,
                                               artifact_path="evaluation/report.html", dst_path=str(downloads))
    assert Path(html).stat().st_size > 0
    _, s3_client = s3
    stored = s3_client.list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")
    assert stored.get("KeyCount", 0) > 0

    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert version.tags["kfp_run_id"] == lineage["kfp_run_id"]
    assert version.tags["dataset_md5"] == lineage["dataset_md5"]
    assert version.tags["git_commit"] == lineage["git_commit"]
    assert version.tags["dataset_commit"] == good

    # The same dataset, config and code again: every training stage is reused, not retrained.
    again = run_local(_params(repo, good), tmp_path / "kfp", tmp_path / "workspace", ClusterConfig(gpus_per_step=2))
    assert again.ok, f"second run failed; see {again.run_dir}"
    for task in ("train-pa", "pretrain-vocoder", "finetune-vocoder"):
        metrics = again.outputs[task]["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert metrics["reused"] == 1.0, task
        assert len(list((tmp_path / "workspace" / "stages" / task.replace("-", "_")).iterdir())) == 1, task
    assert int(client.get_model_version_by_alias(MODEL, "challenger").version) == int(version.version) + 1


def test_corrupt_dataset_stops_at_validation(tmp_path, dataset_repo, mlflow_server):
    import mlflow

    from pipelines.run import run_local

    repo, _ = dataset_repo
    before = _versions(MODEL)
    result = run_local(_params(repo, "HEAD", experiment="e2e-corrupt"), tmp_path / "kfp", tmp_path / "workspace")
    assert result.valid is False and not result.ok
    # Nothing after validation ran but the failing gate and the exit handler.
    assert set(result.outputs) <= {"validate-data", "reject-dataset", "close-pipeline-run"}
    assert "close-pipeline-run" in result.outputs
    report = result.artifact("validate-data", "report").read_text()
    assert report.startswith("# Dataset validation: FAIL") and "decode" in report
    assert not (tmp_path / "workspace" / "stages").exists()  # no training step started

    runs = mlflow.search_runs(experiment_names=["e2e-corrupt"], output_format="list")
    assert sorted(r.data.tags.get("pipeline_step") for r in runs) == ["pipeline", "validate"]
    validate = next(r for r in runs if r.data.tags["pipeline_step"] == "validate")
    assert validate.data.tags["dataset_ok"] == "False" and validate.data.metrics["failures"] >= 1
    # The run failed (CI sees red) and its MLflow parent run says so.
    parent = next(r for r in runs if r.data.tags["pipeline_step"] == "pipeline")
    assert parent.info.status == "FAILED" and parent.data.tags["pipeline_state"] == "FAILED"
    assert _versions(MODEL) == before


def _versions(name: str) -> int:
    import mlflow

    with contextlib.suppress(mlflow.exceptions.MlflowException):
        return len(mlflow.MlflowClient().search_model_versions(f"name='{name}'"))
    return 0

