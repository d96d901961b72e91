"""A training stage on several nodes: a Kubeflow PyTorchJob (training operator, kubeflow.org/v1).

    settings = JobSettings(image="ghcr.io/miipher2/miipher2@sha256:...", gpus_per_node=8)
    manifest = pytorchjob_manifest("miipher2-stage1-3fa9c2", "miipher2", arguments, nodes=4, settings=settings)
    run_job(kubernetes.client.CustomObjectsApi(), manifest)     # create, follow, return or raise

The operator starts one Master and `nodes - 1` Workers and gives each pod torchrun's rendezvous
(PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...); every pod runs `torchrun --no-python miipher2
<arguments>`, i.e. the same command a single pod runs. The pods share the workspace volume:
rank 0 writes checkpoints and the final weights there, where the launching step picks them up.
`infra/k8s/training/pytorchjob.yaml` is the hand-written twin of what this module generates.

`run_job` is idempotent per job name: a retried step finds its job already running and follows
it; a job that failed before is deleted and created again (it resumes from its checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class JobFailed(RuntimeError):
    """The PyTorchJob ended in its Failed condition (or disappeared while being followed)."""


@dataclass(frozen=True)
class JobSettings:
    """The pods of a training job: image, GPUs, resources, scheduling, volumes, credentials.

    Defaults name what infra/k8s creates (see infra/README.md)."""

    image: str
    gpus_per_node: int = 1
    accelerator: str = "nvidia.com/gpu"
    cpu: str = "8"
    memory_request: str = "48Gi"
    memory_limit: str = "64Gi"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    workspace_pvc: str = "miipher2-workspace"
    workspace_mount: str = "/workspace"
    shm_size: str = "16Gi"
    config_map: str = "miipher2-settings"
    secrets: list[str] = field(default_factory=lambda: ["miipher2-s3", "miipher2-mlflow"])
    optional_secrets: list[str] = field(default_factory=lambda: ["miipher2-huggingface"])
    service_account: str = "miipher2-training"
    priority_class: str = "miipher2-preemptible-gpu"
    user: int = 1000                 # the image's user; also the fsGroup of the workspace volume
    backoff_limit: int = 6           # pod restarts before the job counts as failed
    ttl_seconds_after_finished: int = 604800


def pytorchjob_manifest(name: str, namespace: str, arguments: Sequence[str], *, nodes: int, settings: JobSettings,
                        labels: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None) -> dict:
    """The PyTorchJob that runs `miipher2 <arguments>` on `nodes` pods of `settings.gpus_per_node` GPUs."""
    labels = {"app.kubernetes.io/name": "miipher2-train", "app.kubernetes.io/component": "training",
              "app.kubernetes.io/part-of": "miipher2", **(labels or {})}
    container = {
        "name": "pytorch",  # the operator requires this name
        "image": settings.image,
        "command": ["torchrun", "--no-python", "miipher2"],
        "args": list(arguments),
        "env": [{"name": key, "value": value} for key, value in (env or {}).items()],
        "envFrom": [{"configMapRef": {"name": settings.config_map}}]
                   + [{"secretRef": {"name": name}} for name in settings.secrets]
                   + [{"secretRef": {"name": name, "optional": True}} for name in settings.optional_secrets],
        "resources": {
            "requests": {"cpu": settings.cpu, "memory": settings.memory_request},
            "limits": {"cpu": settings.cpu, "memory": settings.memory_limit,
                       settings.accelerator: str(settings.gpus_per_node)},
        },
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": "workspace", "mountPath": settings.workspace_mount},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod = {
        # Istio sidecars (Kubeflow profile namespaces) would sit between the NCCL connections.
        "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {
            "serviceAccountName": settings.service_account,
            "priorityClassName": settings.priority_class,
            "securityContext": {"runAsUser": settings.user, "runAsGroup": settings.user, "runAsNonRoot": True,
                                "fsGroup": settings.user, "fsGroupChangePolicy": "OnRootMismatch"},
            "nodeSelector": dict(settings.node_selector),
            "tolerations": [dict(t) for t in settings.tolerations],
            "containers": [container],
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": settings.workspace_pvc}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}],
        },
    }
    replicas = {"Master": 1, "Worker": nodes - 1}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(settings.gpus_per_node),
            "runPolicy": {"backoffLimit": settings.backoff_limit, "cleanPodPolicy": "None",
                          "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished},
            "pytorchReplicaSpecs": {replica: {"replicas": count, "restartPolicy": "OnFailure", "template": pod}
                                    for replica, count in replicas.items() if count > 0},
        },
    }


class CustomObjects(Protocol):
    """The part of `kubernetes.client.CustomObjectsApi` this module uses (tests pass a fake)."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict) -> dict: ...

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict: ...

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> dict: ...


@dataclass(frozen=True)
class JobState:
    phase: str                                   # the latest true condition: Created, Running, Succeeded, ...
    message: str = ""
    replicas: tuple[tuple[str, str], ...] = ()   # (replica type, "active=2 succeeded=0 failed=0")

    def describe(self) -> str:
        replicas = "; ".join(f"{kind}: {counts}" for kind, counts in self.replicas)
        return " — ".join(part for part in (self.phase, self.message, replicas) if part)


def job_state(job: Mapping[str, Any]) -> JobState:
    status = job.get("status") or {}
    true = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    terminal = [c for c in true if c.get("type") in ("Succeeded", "Failed")]
    current = (terminal or true or [{"type": "Pending"}])[-1]
    replicas = tuple(sorted((kind, " ".join(f"{k}={counts.get(k, 0)}" for k in ("active", "succeeded", "failed")))
                            for kind, counts in (status.get("replicaStatuses") or {}).items()))
    return JobState(str(current.get("type")), str(current.get("message") or ""), replicas)


def run_job(api: CustomObjects, manifest: dict, *, poll_s: float = 30.0, log: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> JobState:
    """Create `manifest` (or follow the running job of that name) until it succeeds.

    Logs every change of condition and replica counts; raises `JobFailed` when the job fails."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    where = f"PyTorchJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        log(f"{where} created ({_size(manifest)})")
    except ApiException as err:
        if err.status != 409:
            raise
        _replace_if_failed(api, manifest, where, log, poll_s, sleep)
    last = None
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                raise JobFailed(f"{where} was deleted while the step was following it") from err
            raise
        state = job_state(job)
        if state != last:
            log(f"{where}: {state.describe()}")
            last = state
        if state.phase == "Succeeded":
            return state
        if state.phase == "Failed":
            raise JobFailed(f"{where} failed: {state.message or 'no message'} "
                            f"(logs: kubectl -n {namespace} logs {name}-master-0)")
        sleep(poll_s)


def _replace_if_failed(api: CustomObjects, manifest: dict, where: str, log, poll_s: float, sleep) -> None:
    """A job of this name exists: follow it, unless it failed (then start it again, from its checkpoints)."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    state = job_state(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    if state.phase != "Failed":
        log(f"{where} exists ({state.phase}): following it")
        return
    log(f"{where} failed before ({state.message or 'no message'}): deleting it and starting it again")
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    while True:
        try:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
            return
        except ApiException as err:
            if err.status != 409:  # 409: the old job is still being deleted
                raise
            sleep(poll_s)


def _size(manifest: dict) -> str:
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    pods = sum(spec["replicas"] for spec in specs.values())
    return f"{pods} pod(s) x {manifest['spec']['nprocPerNode']} process(es)"


def label_value(text: str) -> str:
    """A Kubernetes label value made of `text`: at most 63 characters, alphanumerics at both ends."""
    from miipher2.data.paths import path_component

    return path_component(text)[:63].strip("-_.")


def current_namespace(default: str = "miipher2") -> str:
    """The namespace this pod runs in (its service account's), else `default`."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default
