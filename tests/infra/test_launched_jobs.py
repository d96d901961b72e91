"""The PyTorchJob a multi-node training step launches: its manifest against the operator's schema
and our cluster rules, its command parsed by the real parsers, and the step's create/follow/
publish logic against a fake Kubernetes API whose "operator" runs the pods' command here.

Not run here (no cluster): the training operator itself, NCCL across nodes, a real API server's
watch semantics. docs/pipeline.md says so too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from miipher2 import steps
from miipher2.cli import build_parser, main
from miipher2.launch import stage_arguments
from miipher2.launch.pytorchjob import GROUP, PLURAL, VERSION, JobFailed, job_state, pytorchjob_manifest, run_job
from miipher2.lineage import Lineage
from pipelines.cluster import ClusterConfig
from tests.infra import manifests
from tests.train.conftest import make_corpus, tiny_overrides

CLUSTER = ClusterConfig(gpus_per_step=8, stage_nodes={"finetune_vocoder": 4})


def launched(stage: str = "stage3", nodes: int = 4) -> dict:
    arguments = stage_arguments(stage, config_file="/workspace/stages/finetune_vocoder/k/train-config.yaml",
                                data_root="/workspace/datasets/abc.dir", out_dir="/workspace/stages/finetune_vocoder/k",
                                stage1_dir="/tmp/inputs/adapters", stage2_dir="/tmp/inputs/vocoder",
                                mlflow_run_id="0123abcd")
    return pytorchjob_manifest("miipher2-stage3-0123456789ab", "miipher2", arguments, nodes=nodes,
                               settings=CLUSTER.job_settings(), env={"HF_HUB_OFFLINE": "1"},
                               labels={"miipher2/stage-key": "0123456789abcdef0123", "miipher2/kfp-run-id": "run-1"})


@pytest.mark.parametrize("version", manifests.K8S_VERSIONS)
@pytest.mark.parametrize("nodes", [2, 4])
def test_the_launched_job_matches_the_operators_schema(version, nodes):
    manifests.validate(launched(nodes=nodes), version)
    specs = launched(nodes=nodes)["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == nodes - 1


def test_the_launched_job_keeps_the_cluster_rules():
    job = launched()
    for where, container, pod in manifests.containers(job):
        limits = container["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8" and job["spec"]["nprocPerNode"] == "8", where
        assert pod["priorityClassName"] == "miipher2-preemptible-gpu" and pod["serviceAccountName"] == "miipher2-training"
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000, where
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm == {"medium": "Memory", "sizeLimit": "16Gi"}
        pvc = next(v for v in pod["volumes"] if v["name"] == "workspace")["persistentVolumeClaim"]
        assert pvc["claimName"] == "miipher2-workspace"
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/dev/shm"}
        # Credentials only through Secret references; literal values carry no secret.
        assert all(not any(word in var["name"] for word in ("SECRET", "TOKEN", "PASSWORD")) for var in container["env"])
        sources = {(next(iter(s)), s[next(iter(s))]["name"], s[next(iter(s))].get("optional", False))
                   for s in container["envFrom"]}
        assert {("configMapRef", "miipher2-settings", False), ("secretRef", "miipher2-s3", False),
                ("secretRef", "miipher2-mlflow", False), ("secretRef", "miipher2-huggingface", True)} == sources


def test_the_launched_command_parses_for_torchrun_and_miipher2(monkeypatch):
    from torch.distributed import run as torchrun

    job = launched()
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for key, value in {"PET_NNODES": "4", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": job["spec"]["nprocPerNode"],
                       "PET_MASTER_ADDR": "miipher2-stage3-0123456789ab-master-0", "PET_MASTER_PORT": "23456"}.items():
        monkeypatch.setenv(key, value)
    config, command, command_args = torchrun.config_from_args(
        torchrun.parse_args(container["command"][1:] + container["args"]))
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (4, 4, 8)
    args = build_parser().parse_args(command_args)
    assert (args.train_command, args.out, args.resume, args.mlflow_run_id) == (
        "stage3", "/workspace/stages/finetune_vocoder/k", "yes", "0123abcd")
    assert (args.stage1, args.stage2) == ("/tmp/inputs/adapters", "/tmp/inputs/vocoder")


class FakeKubernetes:
    """A CustomObjectsApi for PyTorchJobs. Each `get` moves the job to the next of `phases` (its
    latest condition); with the phases used up, the job keeps its last state, or is gone when
    `vanish`. On creation the "operator" may run the pods' command (`run`)."""

    def __init__(self, phases=("Created", "Running", "Succeeded"), *, run=None, existing=None, message="",
                 vanish=False):
        self.phases, self.run, self.message, self.vanish = list(phases), run, message, vanish
        self.jobs = {job["metadata"]["name"]: job for job in existing or []}
        self.calls: list[str] = []
        self.terminating = False

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == (GROUP, VERSION, PLURAL) and namespace == body["metadata"]["namespace"]
        self.calls.append("create")
        if self.terminating:  # the first attempt after a delete finds the old job still terminating
            self.terminating = False
            raise ApiException(status=409, reason="object is being deleted")
        if body["metadata"]["name"] in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[body["metadata"]["name"]] = copy.deepcopy(body)
        if self.run:
            self.run(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        if name not in self.jobs or (self.vanish and not self.phases):
            raise ApiException(status=404, reason="NotFound")
        if self.phases:
            phase = self.phases.pop(0)
            self.jobs[name]["status"] = {
                "conditions": [{"type": phase, "status": "True", "message": self.message}],
                "replicaStatuses": {"Master": {"active": int(phase == "Running")},
                                    "Worker": {"active": 3 * int(phase == "Running")}}}
        return copy.deepcopy(self.jobs[name])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        del self.jobs[name]
        self.terminating = True


def follow(api, log=None):
    return run_job(api, launched(), poll_s=0, log=(log.append if log is not None else lambda line: None),
                   sleep=lambda seconds: None)


def test_run_job_follows_the_job_to_success_and_logs_each_change():
    api, log = FakeKubernetes(phases=["Created", "Running", "Running", "Running", "Succeeded"]), []
    assert follow(api, log).phase == "Succeeded"
    assert [line.split(": ", 1)[1].split(" ")[0] for line in log[1:]] == ["Created", "Running", "Succeeded"]
    assert "Worker: active=3" in log[2]  # replica counts are streamed too


def test_run_job_raises_with_the_operators_message_when_the_job_fails():
    api = FakeKubernetes(phases=["Created", "Running", "Failed"], message="Master-0 exited with code 1")
    with pytest.raises(JobFailed, match="Master-0 exited with code 1.*kubectl -n miipher2 logs"):
        follow(api)


def test_a_retried_step_follows_its_running_job_instead_of_creating_another():
    api, log = FakeKubernetes(phases=["Running", "Running", "Succeeded"], existing=[launched()]), []
    assert follow(api, log).phase == "Succeeded"
    assert api.calls.count("create") == 1 and "delete" not in api.calls
    assert "exists (Running): following it" in log[0]


def test_a_job_that_failed_before_is_replaced():
    api, log = FakeKubernetes(phases=["Failed", "Created", "Succeeded"], existing=[launched()], message="OOM"), []
    assert follow(api, log).phase == "Succeeded"
    assert api.calls[:5] == ["create", "get", "delete", "create", "create"]
    assert "failed before (OOM)" in log[0]


def test_a_job_deleted_while_followed_fails_the_step():
    with pytest.raises(JobFailed, match="deleted"):
        follow(FakeKubernetes(phases=["Created", "Running"], vanish=True))


def test_job_state_reads_the_latest_true_condition():
    job = {"status": {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "False"},
                                     {"type": "Restarting", "status": "True", "message": "node lost"}]}}
    assert (job_state(job).phase, job_state(job).message) == ("Restarting", "node lost")
    assert job_state({}).phase == "Pending"


@pytest.mark.slow
def test_a_multi_node_step_trains_through_the_job_and_publishes_with_lineage(tmp_path, monkeypatch):
    """The step as a cluster runs it, with the fake API's operator executing the Master's command
    in this process (one process instead of 2 pods x 8 GPUs): the stage lands on the workspace,
    its metrics in the step's MLflow child run, its weights in the step's output artifact."""
    import mlflow
    from kubernetes import client
    from kubernetes import config as kubeconfig

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    corpus = make_corpus(tmp_path / "corpus")
    created = []

    def operator(body):
        created.append(body)
        (container,) = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        assert container["command"] == ["torchrun", "--no-python", "miipher2"]
        assert main(container["args"]) == 0

    api = FakeKubernetes(run=operator)
    monkeypatch.setattr(kubeconfig, "load_incluster_config", lambda: None)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda: api)
    monkeypatch.setattr("miipher2.launch.pytorchjob.time.sleep", lambda s: None)
    lineage = Lineage(git_commit="abc", dataset_revision="v1", dataset_md5="0123456789abcdef0123456789abcdef.dir",
                      kfp_run_id="run-7", backbone="w2v-bert-2.0", experiment="multi-node")
    from miipher2.lineage import start_pipeline_run

    lineage = start_pipeline_run(lineage, "training run-7")
    launch = ClusterConfig(gpus_per_step=1, stage_nodes={"train_pa": 2}).launch("train_pa")
    result = steps.train_adapters(data_root=str(corpus), lineage=lineage, training_preset="demo-cpu",
                                  overrides=tiny_overrides(tmp_path / "cache") + ["stage1.steps=2"],
                                  workspace=str(tmp_path / "workspace"), out_dir=str(tmp_path / "adapters"),
                                  launch=launch)
    (job,) = created
    assert job["metadata"]["labels"]["miipher2/kfp-run-id"] == "run-7"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert (Path(result.out_dir) / "adapters.safetensors").is_file()
    assert json.loads((Path(result.out_dir) / "result.json").read_text())["step"] == 2
    assert result.metrics["reused"] == 0.0

    runs = mlflow.search_runs(experiment_names=["multi-node"], output_format="list")
    (step_run,) = [r for r in runs if r.data.tags.get("pipeline_step") == "train_pa"]
    assert step_run.data.tags["kfp_run_id"] == "run-7" and step_run.data.tags["mlflow.parentRunId"] == lineage.parent_run_id
    assert "stage1/loss" in step_run.data.metrics  # logged by the job's rank 0 into the step's run
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][-1] == \
        step_run.info.run_id
