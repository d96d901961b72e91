"""The compiled training pipeline: DAG, validation gate, exit handler, GPU and pool settings, CPU
requests, Secrets, retries, caching, multi-GPU and multi-node stages, golden copy."""

import os
from pathlib import Path

import pytest
import yaml

from components._base import DEFAULT_IMAGE, IMAGE
from miipher2.launch import Launch
from pipelines.cluster import ClusterConfig
from pipelines.run import compile_pipeline, normalised
from pipelines.training import build_training_pipeline
from tests.kfp_spec import all_tasks, executor_label

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "training.yaml"
TRAINING_TASKS = {"train-pa", "pretrain-vocoder", "finetune-vocoder"}
GPU_TASKS = TRAINING_TASKS | {"evaluate"}
CPU_TASKS = {"validate-data", "register", "reject-dataset", "close-pipeline-run"}
CANARIES = {"AWS_SECRET_ACCESS_KEY": "canary-s3-secret-7f3a", "AWS_ACCESS_KEY_ID": "CANARYKEYID7F3A",
            "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-7f3a", "KFP_TOKEN": "canary-kfp-token-7f3a"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    # Credentials in the compiling process's environment must not leak into the spec.
    saved = {k: os.environ.get(k) for k in CANARIES}
    os.environ.update(CANARIES)
    try:
        path = compile_pipeline(build_training_pipeline(), tmp_path_factory.mktemp("compiled") / "training.yaml")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _executor(spec, task):
    return spec["deploymentSpec"]["executors"][executor_label(spec, task)]


def test_dag_edges(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    assert set(tasks) >= GPU_TASKS | CPU_TASKS
    deps = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    # Inside the condition, stage 1 and 2 depend on nothing but the (parent-scope) dataset: parallel.
    assert deps["train-pa"] == set() and deps["pretrain-vocoder"] == set()
    assert deps["finetune-vocoder"] == {"train-pa", "pretrain-vocoder"}
    assert deps["evaluate"] == {"finetune-vocoder"}
    assert deps["register"] == {"evaluate", "finetune-vocoder"}
    for name in ("train-pa", "pretrain-vocoder", "finetune-vocoder", "evaluate", "register"):
        assert tasks[name]["inputs"]["artifacts"]["dataset"] == {
            "componentInputArtifact": "pipelinechannel--validate-data-dataset"}


def test_everything_after_validation_is_gated_on_its_result(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    branches = tasks["condition-branches-2"]
    assert branches["dependentTasks"] == ["validate-data"]
    gates = spec["components"][branches["componentRef"]["name"]]["dag"]["tasks"]
    valid, invalid = (gates[name] for name in ("condition-3", "condition-4"))
    assert valid["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--validate-data-Output'] == true"
    assert invalid["triggerPolicy"]["condition"] == f"!({valid['triggerPolicy']['condition']})"
    assert set(spec["components"][valid["componentRef"]["name"]]["dag"]["tasks"]) == GPU_TASKS | {"register"}
    # The other branch fails the run with the validation report: CI sees red, nothing trains.
    assert set(spec["components"][invalid["componentRef"]["name"]]["dag"]["tasks"]) == {"reject-dataset"}
    assert tasks["reject-dataset"]["inputs"]["artifacts"]["report"] == {
        "componentInputArtifact": "pipelinechannel--validate-data-report"}
    # The validation report is an output of the ungated step, so it exists whatever the outcome.
    outputs = spec["components"]["comp-validate-data"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_an_exit_handler_closes_the_mlflow_parent_run_whatever_happened(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "close-pipeline-run"}
    assert set(spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]) == {"validate-data", "condition-branches-2"}
    closing = root["close-pipeline-run"]
    assert closing["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs after failures too
    assert closing["dependentTasks"] == ["exit-handler-1"]
    parameters = closing["inputs"]["parameters"]
    assert parameters["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    # The same run id the validate step tags the parent run with.
    validate = all_tasks(spec)["validate-data"]["inputs"]["parameters"]
    assert parameters["kfp_run_id"] == validate["kfp_run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}


def test_typed_artifacts_flow_between_steps(compiled):
    _, spec, _ = compiled
    types = {name: {key: a["artifactType"]["schemaTitle"] for key, a in
                    comp.get("outputDefinitions", {}).get("artifacts", {}).items()}
             for name, comp in spec["components"].items() if "executorLabel" in comp}
    assert types["comp-validate-data"]["dataset"] == "system.Dataset"
    assert types["comp-train-pa"]["adapters"] == "system.Model"
    assert types["comp-pretrain-vocoder"]["vocoder"] == "system.Model"
    assert types["comp-finetune-vocoder"]["model"] == "system.Model"
    assert types["comp-evaluate"] == {"metrics": "system.Metrics", "report_html": "system.HTML",
                                      "report_markdown": "system.Markdown", "results": "system.Artifact"}


def test_gpu_only_where_needed(compiled):
    _, spec, platform = compiled
    for task in GPU_TASKS:
        resources = _executor(spec, task)["container"]["resources"]
        accelerator = resources["accelerator"]
        assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1"), task
        label = executor_label(spec, task)
        assert platform[label]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform[label]["tolerations"]
        assert {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"} in \
            platform[label]["emptyDirMounts"]
    for task in CPU_TASKS:
        assert "accelerator" not in _executor(spec, task)["container"].get("resources", {}), task
        assert "tolerations" not in platform[executor_label(spec, task)]


def test_every_step_requests_cpu_and_memory_and_bounds_memory(compiled):
    _, spec, _ = compiled
    for task in GPU_TASKS | CPU_TASKS:
        resources = _executor(spec, task)["container"]["resources"]
        assert {"resourceCpuRequest", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(resources), task
    assert _executor(spec, "validate-data")["container"]["resources"]["resourceCpuRequest"] == ClusterConfig().cpu_request


def test_workspace_volume_for_data_checkpoints_and_cache(compiled):
    _, spec, platform = compiled
    for task in GPU_TASKS | {"validate-data"}:
        mounts = platform[executor_label(spec, task)]["pvcMount"]
        assert [(m["constant"], m["mountPath"]) for m in mounts] == [("miipher2-workspace", "/workspace")]
    # The steps' workspace is the mount path itself, not a run-time parameter that could differ.
    assert "workspace" not in spec["root"]["inputDefinitions"]["parameters"]
    for task in TRAINING_TASKS | {"validate-data"}:
        assert all_tasks(spec)[task]["inputs"]["parameters"]["workspace"] == {"runtimeValue": {"constant": "/workspace"}}


def test_credentials_only_from_secrets(compiled):
    text, spec, platform = compiled
    for task in GPU_TASKS | CPU_TASKS:
        secrets = {(s["secretName"], e["envVar"], s["optional"]) for s in platform[executor_label(spec, task)]["secretAsEnv"]
                   for e in s["keyToEnv"]}
        assert {("miipher2-s3", "AWS_ACCESS_KEY_ID", False), ("miipher2-s3", "AWS_SECRET_ACCESS_KEY", False),
                ("miipher2-mlflow", "MLFLOW_TRACKING_PASSWORD", False),
                ("miipher2-s3", "MLFLOW_S3_ENDPOINT_URL", True), ("miipher2-s3", "AWS_ENDPOINT_URL", True),
                ("miipher2-git", "MIIPHER2_GIT_TOKEN", True), ("miipher2-huggingface", "HF_TOKEN", True)} <= secrets, task
        settings = {(m["configMapName"], e["envVar"]) for m in platform[executor_label(spec, task)]["configMapAsEnv"]
                    for e in m["keyToEnv"]}
        assert {("miipher2-settings", "MIIPHER2_DVC_REMOTE_URL"), ("miipher2-settings", "HF_HOME")} <= settings, task
    # No credential is a pipeline parameter, and no credential value is anywhere in the spec.
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(word in p.lower() for word in ("secret", "password", "token", "key"))]
    for value in CANARIES.values():
        assert value not in text
    for task in GPU_TASKS | CPU_TASKS:
        literal = {e["name"] for e in _executor(spec, task)["container"].get("env", [])}
        assert literal == {"MIIPHER2_IMAGE"}, "no literal environment variables but the image's name"


def test_retries_on_gpu_steps_only(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    for task in GPU_TASKS:
        assert tasks[task]["retryPolicy"]["maxRetryCount"] == 3, task
    for task in CPU_TASKS:
        assert "retryPolicy" not in tasks[task], task


def _launch(spec, task) -> Launch:
    return Launch.from_json(all_tasks(spec)[task]["inputs"]["parameters"]["launch"]["runtimeValue"]["constant"])


def test_one_gpu_one_process_per_training_step_by_default(compiled):
    _, spec, _ = compiled
    for task in TRAINING_TASKS:
        assert _launch(spec, task) == Launch(processes=1, nodes=1), task


def test_gpus_per_step_runs_that_many_processes_in_the_pod(tmp_path):
    text = compile_pipeline(build_training_pipeline(ClusterConfig(gpus_per_step=4)), tmp_path / "t.yaml").read_text()
    spec, _ = yaml.safe_load_all(text)
    for task in TRAINING_TASKS:
        assert _launch(spec, task) == Launch(processes=4), task
        assert _executor(spec, task)["container"]["resources"]["accelerator"]["resourceCount"] == "4", task
    assert _executor(spec, "evaluate")["container"]["resources"]["accelerator"]["resourceCount"] == "1"


def test_a_multi_node_stage_launches_a_pytorchjob_from_a_cpu_pod(tmp_path):
    cluster = ClusterConfig(gpus_per_step=8, stage_nodes={"train_pa": 4})
    text = compile_pipeline(build_training_pipeline(cluster), tmp_path / "t.yaml").read_text()
    spec, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    launch = _launch(spec, "train-pa")
    assert (launch.processes, launch.nodes) == (8, 4)
    assert launch.job["image"] == IMAGE and launch.job["workspace_pvc"] == cluster.workspace_pvc
    assert "gpus_per_node" not in launch.job  # it is the launch's `processes`
    resources = _executor(spec, "train-pa")["container"]["resources"]
    assert "accelerator" not in resources and resources["resourceCpuRequest"] == cluster.cpu_request
    assert "tolerations" not in executors[executor_label(spec, "train-pa")]
    assert all_tasks(spec)["train-pa"]["retryPolicy"]["maxRetryCount"] == 3  # a retry follows the same job
    assert _launch(spec, "pretrain-vocoder") == Launch(processes=8)  # other stages stay in their pod


def test_no_step_can_be_served_from_cache(compiled):
    _, spec, _ = compiled
    for name, task in all_tasks(spec).items():
        if "executorLabel" in spec["components"][task["componentRef"]["name"]]:
            assert not task.get("cachingOptions", {}).get("enableCache"), name


def test_steps_run_in_our_image_without_installing_kfp_and_know_its_name(compiled):
    _, spec, _ = compiled
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == IMAGE
        assert "pip install" not in " ".join(executor["container"]["command"])
        # Lineage records the image (a pod cannot see its own image reference).
        assert {"name": "MIIPHER2_IMAGE", "value": IMAGE} in executor["container"]["env"]


def test_steps_may_learn_the_kfp_ui_address_for_run_links(compiled):
    _, _, executors = compiled
    for name, executor in executors.items():
        optional = [m for m in executor["configMapAsEnv"] if m["optional"]]
        assert [k for m in optional for k in m["keyToEnv"]] == [{"configMapKey": "KFP_UI_URL", "envVar": "KFP_UI_URL"}]


def test_golden_copy_matches(compiled):
    """The committed pipelines/training.yaml is what the source compiles to.

    After an intended change: .venv/bin/miipher2 pipeline compile -o pipelines/training.yaml
    """
    if IMAGE != DEFAULT_IMAGE:
        pytest.skip(f"MIIPHER2_IMAGE={IMAGE} is set; the golden copy uses {DEFAULT_IMAGE}")
    text, _, _ = compiled
    assert normalised(text) == normalised(GOLDEN.read_text()), (
        "pipelines/training.yaml is stale: review the change, then regenerate it with "
        "`.venv/bin/miipher2 pipeline compile -o pipelines/training.yaml`")


def test_compiles_without_cluster_settings(tmp_path):
    text = compile_pipeline(build_training_pipeline(cluster=None), tmp_path / "plain.yaml").read_text()
    assert "platforms" not in text and "accelerator" not in text and "retryPolicy" not in text
