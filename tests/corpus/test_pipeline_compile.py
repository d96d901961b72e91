"""The compiled restoration pipeline: fan-out over shards, GPU only on the shard step, Secrets, golden copy."""

import os
from pathlib import Path

import pytest
import yaml

from components._base import DEFAULT_IMAGE, IMAGE
from pipelines.restoration import build_restoration_pipeline
from pipelines.run import compile_pipeline, normalised
from tests.kfp_spec import all_tasks, executor_label

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "restoration.yaml"
CANARIES = {"AWS_SECRET_ACCESS_KEY": "canary-s3-secret-5c1d", "AWS_ACCESS_KEY_ID": "CANARYKEYID5C1D",
            "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-5c1d", "KFP_TOKEN": "canary-kfp-token-5c1d"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    for key, value in CANARIES.items():  # credentials in the compiler's environment must not leak
        patch.setenv(key, value)
    try:
        text = compile_pipeline(build_restoration_pipeline(), tmp_path_factory.mktemp("compiled") / "restoration.yaml").read_text()
    finally:
        patch.undo()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_plan_fans_out_over_shards_then_merges(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"plan-shards", "for-loop-1", "merge-shards"}
    loop = root["for-loop-1"]
    assert loop["dependentTasks"] == ["plan-shards"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-shards-Output"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 8
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"restore-shard"}
    shard_input = body["restore-shard"]["inputs"]["parameters"]["shard"]
    assert shard_input["componentInputParameter"] == "pipelinechannel--plan-shards-Output-loop-item"
    assert sorted(root["merge-shards"]["dependentTasks"]) == ["for-loop-1", "plan-shards"]  # after every shard
    # Shards and merge find the run's folder through the plan artifact, not a parameter of their own.
    assert body["restore-shard"]["inputs"]["artifacts"]["plan"] == {
        "componentInputArtifact": "pipelinechannel--plan-shards-plan"}
    assert root["merge-shards"]["inputs"]["artifacts"]["plan"]["taskOutputArtifact"]["producerTask"] == "plan-shards"
    outputs = spec["components"]["comp-merge-shards"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
        "restored_manifest": "system.Dataset", "summary": "system.Markdown", "summary_json": "system.Artifact",
        "metrics": "system.Metrics"}


def test_gpu_only_on_the_shard_step_with_retries(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    accelerator = executors[executor_label(spec, "restore-shard")]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    shard = platform[executor_label(spec, "restore-shard")]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in shard["tolerations"]
    assert shard["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert all_tasks(spec)["restore-shard"]["retryPolicy"]["maxRetryCount"] == 3
    for task in ("plan-shards", "merge-shards"):
        resources = executors[executor_label(spec, task)]["container"].get("resources", {})
        assert "accelerator" not in resources, task
        assert {"resourceCpuRequest", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(resources), task
        assert "tolerations" not in platform[executor_label(spec, task)], task
        assert "retryPolicy" not in all_tasks(spec)[task]
    for task in ("plan-shards", "restore-shard", "merge-shards"):  # the resumable state lives on the workspace
        mounts = platform[executor_label(spec, task)]["pvcMount"]
        assert [(m["constant"], m["mountPath"]) for m in mounts] == [("miipher2-workspace", "/workspace")]
        assert not all_tasks(spec)[task].get("cachingOptions", {}).get("enableCache"), task
    # Default: a folder of the run's own on the workspace (<workspace>/restored/<corpus>/<run id>).
    assert spec["root"]["inputDefinitions"]["parameters"]["output_dir"]["defaultValue"] == ""
    planned = all_tasks(spec)["plan-shards"]["inputs"]["parameters"]
    assert planned["workspace"] == {"runtimeValue": {"constant": "/workspace"}}
    assert planned["kfp_run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}


def test_credentials_only_from_secrets(compiled):
    text, spec, platform = compiled
    for task in ("plan-shards", "restore-shard", "merge-shards"):
        secrets = {(s["secretName"], e["envVar"]) for s in platform[executor_label(spec, task)]["secretAsEnv"] for e in s["keyToEnv"]}
        assert {("miipher2-s3", "AWS_ACCESS_KEY_ID"), ("miipher2-s3", "AWS_SECRET_ACCESS_KEY"),
                ("miipher2-s3", "AWS_ENDPOINT_URL"), ("miipher2-mlflow", "MLFLOW_TRACKING_PASSWORD")} <= secrets, task
        literal = spec["deploymentSpec"]["executors"][executor_label(spec, task)]["container"].get("env", [])
        assert [e["name"] for e in literal] == ["MIIPHER2_IMAGE"], "no literal environment variables but the image's name"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if any(w in p.lower() for w in ("secret", "password", "token", "key"))]
    for value in CANARIES.values():
        assert value not in text


def test_golden_copy_matches(compiled):
    """pipelines/restoration.yaml is what the source compiles to.

    After an intended change: .venv/bin/miipher2 restoration-pipeline compile -o pipelines/restoration.yaml
    """
    if IMAGE != DEFAULT_IMAGE:
        pytest.skip(f"MIIPHER2_IMAGE={IMAGE} is set; the golden copy uses {DEFAULT_IMAGE}")
    text, _, _ = compiled
    assert normalised(text) == normalised(GOLDEN.read_text()), (
        "pipelines/restoration.yaml is stale: review the change, then regenerate it with "
        "`.venv/bin/miipher2 restoration-pipeline compile -o pipelines/restoration.yaml`")


def test_compiles_without_cluster_settings(tmp_path):
    text = compile_pipeline(build_restoration_pipeline(cluster=None), tmp_path / "plain.yaml").read_text()
    assert "platforms" not in text and "accelerator" not in text and "retryPolicy" not in text
    assert "parallelismLimit: 8" in text


def test_cli_compile_writes_the_same_spec(tmp_path, capsys):
    from miipher2.cli import main

    assert main(["restoration-pipeline", "compile", "-o", str(tmp_path / "r.yaml")]) == 0
    if IMAGE == DEFAULT_IMAGE:
        assert normalised((tmp_path / "r.yaml").read_text()) == normalised(GOLDEN.read_text())
    assert os.path.exists(tmp_path / "r.yaml")
