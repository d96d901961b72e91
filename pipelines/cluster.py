"""Kubernetes settings shared by our pipelines: GPUs, node pools, Secrets, the workspace volume.

A `ClusterConfig` names what the manifests in infra/k8s create; the helpers apply it to a task
with kfp-kubernetes. KFP's local runner ignores all of it, so the local runs execute the very
pipelines a cluster runs.

Requires a Kubeflow Pipelines backend >= 2.15 (`MIN_KFP_BACKEND`): older backends ignore
`optional` on Secret keys mapped to environment variables and fail pods whose Secret lacks one.
"""

from dataclasses import asdict, dataclass, field

from kfp import dsl, kubernetes

from components._base import IMAGE
from miipher2.launch import Launch
from miipher2.launch.pytorchjob import JobSettings

MIN_KFP_BACKEND = (2, 15)
TRAINING_STEPS = ("train_pa", "pretrain_vocoder", "finetune_vocoder")
LOCAL_WORKSPACE = "/tmp/miipher2-workspace"  # the steps' shared folder when a pipeline is built without a cluster


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the steps run on Kubernetes. Names match the manifests in infra/k8s."""

    accelerator_type: str = "nvidia.com/gpu"
    # GPUs of a training step's pod: its stage runs under torchrun with one process per GPU.
    gpus_per_step: int = 1
    # Training steps whose stage runs on several nodes (step name -> nodes): the step launches a
    # Kubeflow PyTorchJob of that many pods x `gpus_per_step` GPUs, follows it and publishes its
    # output; the step's own pod needs no GPU. E.g. {"train_pa": 4, "finetune_vocoder": 4}.
    stage_nodes: dict[str, int] = field(default_factory=dict)
    # GPU pools are tainted so that only GPU work lands there; steps that need a GPU tolerate it.
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[dict[str, str], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    gpu_cpu_request: str = "8"
    gpu_memory_request: str = "48Gi"
    gpu_memory_limit: str = "64Gi"
    # Steps without a GPU: validation (DVC fetch + decoding checks), registration, the exit handler.
    cpu_request: str = "2"
    cpu_memory_request: str = "4Gi"
    cpu_memory_limit: str = "16Gi"
    # Credentials reach pods only as environment variables resolved by the kubelet from Secrets:
    # never as pipeline parameters, never as literals in the compiled YAML.
    secrets: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "miipher2-s3": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        "miipher2-mlflow": {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"},
    })
    # Keys a Secret may lack (S3-compatible endpoints, region; a token for a private dataset
    # repository; a Hugging Face token for gated backbones): mapped as optional.
    optional_secrets: dict[str, dict[str, str]] = field(default_factory=lambda: {
        "miipher2-s3": {"AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
                        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL"},
        "miipher2-git": {"GIT_USERNAME": "MIIPHER2_GIT_USERNAME", "GIT_TOKEN": "MIIPHER2_GIT_TOKEN"},
        "miipher2-huggingface": {"HF_TOKEN": "HF_TOKEN"},
    })
    # Non-secret settings from the platform's ConfigMap: tracking URI, the shared Hub cache, and
    # the DVC remote datasets are read from (an S3 URL: miipher2.data.versioning.platform_remote).
    settings_config_map: str = "miipher2-settings"
    settings: dict[str, str] = field(default_factory=lambda: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "HF_HOME": "HF_HOME", "DVC_REMOTE_URL": "MIIPHER2_DVC_REMOTE_URL"})
    # Keys the ConfigMap may lack: the KFP UI's address makes runs link to their KFP run.
    optional_settings: dict[str, str] = field(default_factory=lambda: {"KFP_UI_URL": "KFP_UI_URL"})
    workspace_pvc: str = "miipher2-workspace"  # ReadWriteMany: both stage-1/2 pods mount it at once
    workspace_mount: str = "/workspace"
    shm_size: str = "16Gi"                     # DataLoader workers exchange batches through /dev/shm
    # A preempted training step is retried; it resumes from its last checkpoint on the workspace.
    retries: int = 3
    retry_backoff: str = "120s"
    # The pods of a multi-node stage (PyTorchJob): no API token, preemptible priority.
    training_service_account: str = "miipher2-training"
    priority_class: str = "miipher2-preemptible-gpu"

    def launch(self, step: str) -> Launch:
        """How training step `step` runs its stage: processes in its pod, or a multi-node PyTorchJob."""
        nodes = self.stage_nodes.get(step, 1)
        if nodes <= 1:
            return Launch(processes=self.gpus_per_step)
        job = asdict(self.job_settings())
        del job["gpus_per_node"]  # the launch's `processes`
        return Launch(processes=self.gpus_per_step, nodes=nodes, job=job)

    def job_settings(self) -> JobSettings:
        """The pods of a multi-node stage: like a training step's pod, with the same credentials."""
        return JobSettings(
            image=IMAGE, gpus_per_node=self.gpus_per_step, accelerator=self.accelerator_type, cpu=self.gpu_cpu_request,
            memory_request=self.gpu_memory_request, memory_limit=self.gpu_memory_limit,
            node_selector=dict(self.gpu_node_selector), tolerations=[dict(t) for t in self.gpu_tolerations],
            workspace_pvc=self.workspace_pvc, workspace_mount=self.workspace_mount, shm_size=self.shm_size,
            config_map=self.settings_config_map, secrets=sorted(self.secrets),
            service_account=self.training_service_account, priority_class=self.priority_class)


def with_credentials(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    for secret, keys in cluster.secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
    for secret, keys in cluster.optional_secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_config_map,
                                     config_map_key_to_env=cluster.settings)
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_config_map,
                                     config_map_key_to_env=cluster.optional_settings, optional=True)


def on_gpu(task: dsl.PipelineTask, cluster: ClusterConfig, gpus: int = 1) -> None:
    """`gpus` GPUs on the GPU pool, shared memory for DataLoader workers, and retries for preemption."""
    task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(gpus)
    task.set_cpu_request(cluster.gpu_cpu_request).set_memory_request(cluster.gpu_memory_request)
    task.set_memory_limit(cluster.gpu_memory_limit)
    for key, value in cluster.gpu_node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in cluster.gpu_tolerations:
        kubernetes.add_toleration(task, **toleration)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=cluster.shm_size)
    with_retries(task, cluster)


def on_cpu(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """CPU and memory for a step without a GPU (so the scheduler can place it and bound it)."""
    task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.cpu_memory_request)
    task.set_memory_limit(cluster.cpu_memory_limit)


def with_retries(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    task.set_retry(num_retries=cluster.retries, backoff_duration=cluster.retry_backoff, backoff_factor=2.0)


def with_workspace(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    kubernetes.mount_pvc(task, pvc_name=cluster.workspace_pvc, mount_path=cluster.workspace_mount)
