"""The training pipeline: validate -> (train_pa || pretrain_vocoder) -> finetune_vocoder -> evaluate -> register.

    validate_data ──ok?──► train_pa ─────────┐
                     └──► pretrain_vocoder ──┴──► finetune_vocoder ──► evaluate ──► register

Everything after validation sits inside `dsl.If(valid)`: an invalid dataset ends the run before
any GPU pod is requested, and its report (a Markdown artifact) stays in the run for inspection.

Cluster settings (GPUs, node pools, Secrets, the workspace volume, /dev/shm, retries) come from a
`ClusterConfig` and are applied with kfp-kubernetes. KFP's local runner ignores Kubernetes
platform settings, accelerators and retries (checked by tests/pipelines), so the local run
executes this very pipeline; `build_training_pipeline(None)` gives one without them.

Regenerate the golden compiled copy beside this file after a deliberate change:
    .venv/bin/miipher2 pipeline compile -o pipelines/training.yaml

(No `from __future__ import annotations` here: KFP reads the pipeline's real annotations.)
"""

from dataclasses import dataclass, field
from typing import List

from kfp import dsl, kubernetes

from components import evaluate, finetune_vocoder, pretrain_vocoder, register, train_pa, validate_data

PIPELINE_NAME = "miipher2-training"


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
    workspace_pvc: str = "miipher2-workspace"  # ReadWriteMany: both stage-1/2 pods mount it at once
    workspace_mount: str = "/workspace"
    shm_size: str = "16Gi"                     # DataLoader workers exchange batches through /dev/shm
    # A preempted training step is retried; it resumes from its last checkpoint on the workspace.
    retries: int = 3
    retry_backoff: str = "120s"


def build_training_pipeline(cluster: ClusterConfig | None = ClusterConfig()):
    """The pipeline function, with `cluster`'s Kubernetes settings (None: none at all)."""
    workspace_default = cluster.workspace_mount if cluster else "/tmp/miipher2-workspace"

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Miipher-2: validate a DVC dataset revision, train adapters and vocoder, evaluate, register.")
    def training_pipeline(
        dvc_repo: str,
        dataset_revision: str = "main",
        dvc_remote: str = "",
        training_preset: str = "paper",
        backbone: str = "",
        overrides: List[str] = [],  # noqa: B006 — KFP reads the default; it is never mutated
        experiment: str = "miipher2-training",
        model_name: str = "miipher2",
        eval_split: str = "test",
        eval_max_utterances: int = 0,
        workspace: str = workspace_default,
    ):
        validated = validate_data(
            dvc_repo=dvc_repo, dataset_revision=dataset_revision, dvc_remote=dvc_remote, workspace=workspace,
            training_preset=training_preset, backbone=backbone, overrides=overrides, experiment=experiment,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).set_display_name("validate dataset")
        steps = [validated]
        # validate_data returns a single bool (its "Output") rather than a NamedTuple field: KFP
        # 2.17's local runner resolves a condition on another task's output only under that name.
        with dsl.If(validated.outputs["Output"] == True, name="dataset-valid"):  # noqa: E712 — a KFP condition
            data = validated.outputs["dataset"]
            adapters = train_pa(dataset=data, training_preset=training_preset, overrides=overrides,
                                workspace=workspace).set_display_name("stage 1: parallel adapters")
            vocoder = pretrain_vocoder(dataset=data, training_preset=training_preset, overrides=overrides,
                                       workspace=workspace).set_display_name("stage 2: vocoder pretraining")
            model = finetune_vocoder(dataset=data, adapters=adapters.outputs["adapters"],
                                     vocoder=vocoder.outputs["vocoder"], training_preset=training_preset,
                                     overrides=overrides, workspace=workspace,
                                     ).set_display_name("stage 3: vocoder fine-tuning")
            evaluation = evaluate(dataset=data, model=model.outputs["model"], split=eval_split,
                                  max_utterances=eval_max_utterances).set_display_name("evaluate")
            registered = register(dataset=data, model=model.outputs["model"],
                                  evaluation=evaluation.outputs["metrics"],
                                  model_name=model_name).set_display_name("register (challenger)")
            steps += [adapters, vocoder, model, evaluation, registered]

        # Every step logs a fresh MLflow child run of this run's parent, validate resolves a
        # moving git revision, register changes the registry: a cache hit would either serve
        # another run's result under this run's lineage or skip a side effect. So: no caching.
        # Preemption is handled by retry + resume from the workspace instead.
        for task in steps:
            task.set_caching_options(False)
        if cluster is not None:
            for task in steps:
                _with_credentials(task, cluster)
            for task in (adapters, vocoder, model, evaluation):
                _on_gpu(task, cluster)
            for task in (validated, adapters, vocoder, model, evaluation):  # the steps that touch data
                _with_workspace(task, cluster)

    return training_pipeline


def _with_credentials(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    for secret, keys in cluster.secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
    for secret, keys in cluster.optional_secrets.items():
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=True)
    kubernetes.use_config_map_as_env(task, config_map_name=cluster.settings_config_map,
                                     config_map_key_to_env=cluster.settings)


def _on_gpu(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
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


def _with_workspace(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    kubernetes.mount_pvc(task, pvc_name=cluster.workspace_pvc, mount_path=cluster.workspace_mount)


training_pipeline = build_training_pipeline()
