"""Kubernetes settings shared by our pipelines: GPUs, node pools, Secrets, the workspace volume.

A `ClusterConfig` names what the manifests in infra/k8s create; the helpers apply it to a task
with kfp-kubernetes. KFP's local runner ignores all of it, so the local runs execute the very
pipelines a cluster runs.
"""

from dataclasses import dataclass, field

from kfp import dsl, kubernetes


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the steps run on Kubernetes. Names match the manifests in infra/k8s."""

    accelerator_type: str = "nvidia.com/gpu"
    gpus_per_step: int = 1
    # GPU pools are tainted so that only GPU work lands there; steps that need a GPU tolerate it.
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    gpu_cpu_request: str = "8"
    gpu_memory_request: str = "48Gi"
    gpu_memory_limit: str = "64Gi"
    # Credentials reach pods only as environment variables resolved by the kubelet from Secrets:
    # never as pipeline parameters, never as literals in the compiled YAML.
    secrets: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "miipher2-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        "miipher2-mlflow": {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
    })
    # Keys a Secret may lack (S3-compatible endpoints, region): mapped as optional.
    optional_secrets: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "miipher2-s3": {"AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"},
    })
    # Non-secret settings (tracking URI, S3 endpoints) from the platform's ConfigMap.
    settings_config_map: str = "miipher2-settings"
    settings: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
    # Keys the ConfigMap may lack: the KFP UI's address makes runs link to their KFP run.
    optional_settings: dict[str, str] = field(default_factory=lambda: {"KFP_UI_URL": "KFP_UI_URL"})
    workspace_pvc: str = "miipher2-workspace"  # ReadWriteMany: both stage-1/2 pods mount it at once
    workspace_mount: str = "/workspace"
    shm_size: str = "16Gi"                     # DataLoader workers exchange batches through /dev/shm
    # A preempted training step is retried; it resumes from its last checkpoint on the workspace.
    retries: int = 3
    retry_backoff: str = "120s"


def with_credentials(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    for secret, keys in cluster.secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
    for secret, keys in cluster.optional_secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_config_map,
                                     config_map_key_to_env=cluster.settings)
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_config_map,
                                     config_map_key_to_env=cluster.optional_settings, optional=True)


def on_gpu(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """One GPU on the GPU pool, shared memory for DataLoader workers, and retries for preemption."""
    task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(cluster.gpus_per_step)
    task.set_cpu_request(cluster.gpu_cpu_request).set_memory_request(cluster.gpu_memory_request)
    task.set_memory_limit(cluster.gpu_memory_limit)
    for key, value in cluster.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in cluster.gpu_tolerations:
        kubernetes.add_toleration(task, **toleration)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cluster.shm_size)
    task.set_retry(num_retries=cluster.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0)


def with_workspace(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    kubernetes.mount_pvc(task, pvc_name=cluster.workspace_pvc, mount_path=cluster.workspace_mount)
