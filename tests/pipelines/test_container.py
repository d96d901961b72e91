"""The pipeline image, built from infra/image/Dockerfile here and run: what it holds, the CLI as the
image's user on read-only data, and the whole training pipeline with every step in a container.

The engine is docker when one runs, else podman as root (what `make setup` installs on Debian).
The base is the CPU stand-in for the PyTorch image (infra/image/local-base.Dockerfile); layers are
cached by the engine, so a rerun with unchanged code rebuilds nothing and one with changed code
rebuilds only the last layers. The pipeline runs through KFP's DockerRunner (podman: its Docker
API), with an MLflow server and a DVC remote on this machine.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import soundfile as sf

from tests.containers import IMAGE_USER, REPO, build, hand_to_image_user, locked_pins, run_in
from tests.servers import new_dataset_repo, running_mlflow_server

pytestmark = pytest.mark.slow

MODEL = "miipher2-container"


@pytest.fixture(scope="module")
def image(engine):
    """The pipeline image on the local CPU base, tagged as the pipeline names it and with the commit."""
    from components._base import IMAGE

    tags = build.build_pipeline_image(engine, IMAGE, local_base=True)
    assert tags[0] == IMAGE
    return IMAGE


def test_image_holds_the_locked_runtime_set_precompiled_and_no_test_tools(engine, image):
    probe = (
        "import importlib.metadata as md, importlib.util, json, os, sys, sysconfig\n"
        "import torch, speechbrain, transformers, mlflow, kfp, dvc, pandera, resemblyzer, webrtcvad, pesq\n"
        "import miipher2.cli, components.validate_data, pipelines.training\n"
        # vars(), not getattr(): speechbrain's lazy modules import on any attribute lookup.
        "files = [vars(m).get('__file__') or '' for m in list(sys.modules.values())]\n"
        "modules = [f for f in files if f.endswith('.py')]\n"
        # site-packages only: setuptools puts its vendored packages' metadata on sys.path too.
        "site = [sysconfig.get_paths()['purelib']]\n"
        "print(json.dumps({'installed': {d.metadata['Name'].lower().replace('_', '-'): d.version"
        " for d in md.distributions(path=site)}, 'uid': os.getuid(), 'commit': os.environ.get('MIIPHER2_GIT_COMMIT'),"
        " 'modules': len(modules), 'without_bytecode': sorted(f for f in modules"
        " if not os.path.exists(importlib.util.cache_from_source(f)))}))\n"
    )
    result = run_in(engine, image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    installed = found["installed"]

    runtime = locked_pins(REPO / "requirements.lock")
    assert installed.pop("torch") == runtime.pop("torch")  # the base's torch, at the locked version
    wrong = {name: (version, installed.get(name)) for name, version in runtime.items() if installed.get(name) != version}
    assert not wrong, f"(locked, in the image) differ: {wrong}"
    assert not set(locked_pins(REPO / "requirements-dev.lock")) & set(installed), "test tools in the production image"
    assert found["uid"] == IMAGE_USER
    commit = build.git_commit(build.PIPELINE_IMAGE_SOURCES)
    assert found["commit"] == commit
    assert engine.inspect(image, '{{index .Labels "org.opencontainers.image.revision"}}') == commit
    assert engine.has_image(build.commit_tag(image, commit))
    # Every module of the stack has bytecode: no step recompiles it at start.
    assert found["modules"] > 1000 and found["without_bytecode"] == []


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory):
    """The tiny demo corpus, as the project writes it (file modes included)."""
    from miipher2.data.demo import DemoConfig, build_demo

    root = tmp_path_factory.mktemp("corpus") / "data"
    build_demo(root, DemoConfig.tiny(librivox_dir=None))
    return root


def test_validate_as_the_image_user_on_a_read_only_corpus(engine, image, demo_corpus):
    result = run_in(engine, image, "miipher2", "validate", "/data", "--report-dir", "/tmp/report",
                  mounts=[(demo_corpus, "/data", "ro")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every check passed" in result.stdout


@pytest.fixture(scope="module")
def shared_root():
    """One folder for everything the pipeline's containers and this process both reach: KFP mounts
    only its pipeline root into step containers, at the same path. Outside pytest's private temp
    folder, which the image's user cannot enter."""
    root = Path(tempfile.mkdtemp(prefix="miipher2-container-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset_repo(shared_root, demo_corpus):
    """A git + DVC repository of the demo corpus whose data lies only in a DVC remote folder."""
    repo = shared_root / "repo"
    run = new_dataset_repo(repo, "shared", str(shared_root / "dvc-remote"))
    shutil.copytree(demo_corpus, repo / "data")
    run("dvc", "add", "-q", "data")
    run("dvc", "push", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "dataset")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    return repo


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server on loopback (the steps' containers share this machine's network)."""
    root = tmp_path_factory.mktemp("mlflow")
    with running_mlflow_server(root, str(root / "artifacts")) as url:
        yield url


@pytest.fixture(scope="module")
def pipeline_run(engine, image, shared_root, dataset_repo, mlflow_server):
    """The training pipeline, each step in the image, through KFP's DockerRunner."""
    from pipelines.containers import docker_runner
    from pipelines.run import run_local
    from tests.pipelines.test_local_run import TINY

    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dataset_repo, check=True, capture_output=True,
                              text=True).stdout.strip()
    params = {"dvc_repo": str(dataset_repo), "dataset_revision": revision, "dvc_remote": "shared",
              "training_preset": "demo-cpu", "overrides": TINY, "experiment": "container", "model_name": MODEL,
              "eval_max_utterances": 1}
    hand_to_image_user(shared_root)
    with engine.docker_api(shared_root) as docker_host, pytest.MonkeyPatch.context() as patch, \
            docker_runner(network_mode="host", environment={"MLFLOW_TRACKING_URI": mlflow_server}) as runner:
        patch.setenv("DOCKER_HOST", docker_host)  # where KFP's docker client connects
        return run_local(params, shared_root, shared_root / "workspace", runner=runner)


def test_pipeline_runs_every_step_in_the_image(pipeline_run, mlflow_server, image, engine):
    import mlflow

    result = pipeline_run
    assert result.ok, f"pipeline failed; see {result.run_dir}"
    assert set(result.step_seconds) == {"validate-data", "train-pa", "pretrain-vocoder", "finetune-vocoder",
                                        "evaluate", "register"}
    # Written by the image's user, not by this process: each step really ran in a container.
    outputs = sorted(result.run_dir.glob("*/executor_output.json"))
    assert {path.parent.name for path in outputs} == {"validate-data", "train-pa", "pretrain-vocoder",
                                                       "finetune-vocoder", "evaluate", "register",
                                                       "close-pipeline-run"}  # the exit handler too
    assert {path.stat().st_uid for path in outputs} == {IMAGE_USER}

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert version.tags["git_commit"] == engine.inspect(image, '{{index .Labels "org.opencontainers.image.revision"}}')


def test_steps_report_their_own_exit_status(engine, image, tmp_path, capsys):
    """KFP's own runner loses auto-removed containers: through podman, a step that ends at once
    crashes the run, and one that fails after its output was read is reported as succeeded."""
    import docker

    from pipelines.containers import run_container

    with engine.docker_api(tmp_path) as docker_host:
        client = docker.DockerClient(base_url=docker_host)
        try:
            assert run_container(client, image, ["python", "-c", "import sys; sys.exit(3)"], volumes={}) == 3
            fails_late = "import sys, time; print('said and gone', flush=True); time.sleep(2); sys.exit(4)"
            assert run_container(client, image, ["python", "-c", fails_late], volumes={}) == 4
            assert run_container(client, image, ["python", "-c", "pass"], volumes={}) == 0
            assert not client.containers.list(all=True, filters={"ancestor": image})  # nothing left behind
        finally:
            client.close()
    assert "said and gone" in capsys.readouterr().out


def test_restore_with_the_pipeline_model_moved_elsewhere(engine, image, pipeline_run, demo_corpus, tmp_path):
    """The exported model directory is self-contained: mounted read-only at another path, it restores."""
    model = pipeline_run.artifact("finetune-vocoder", "model")
    assert model is not None, "the pipeline exported no model"
    wave = sorted((demo_corpus / "clean").rglob("*.wav"))[0]
    out = tmp_path / "restored"
    out.mkdir()
    hand_to_image_user(out)
    result = run_in(engine, image, "miipher2", "restore", f"/in/{wave.name}", "-o", "/out", "--model", "/model",
                  mounts=[(model, "/model", "ro"), (wave.parent, "/in", "ro"), (out, "/out", "rw")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [restored] = list(out.rglob("*.wav"))
    info = sf.info(restored)
    assert info.frames > 0 and info.samplerate > 0
