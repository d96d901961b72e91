"""The training pipeline: validate -> (train_pa || pretrain_vocoder) -> finetune_vocoder -> evaluate -> register.

    ExitHandler(close_pipeline_run) {
        validate_data ──valid──► train_pa ─────────┐
                      │    └──► pretrain_vocoder ──┴──► finetune_vocoder ──► evaluate ──► register
                      └─invalid──► reject_dataset (fails the run)
    }

An invalid dataset ends the run before any GPU pod is requested, and fails it: CI and the KFP UI
see red, and the validation report stays in the run. Whatever happens, the exit handler then
ends the run's MLflow parent run with the run's final state (FAILED when anything failed).

Cluster settings (GPUs, node pools, Secrets, the workspace volume, /dev/shm, retries, how many
processes and nodes each training stage uses) come from a `pipelines.cluster.ClusterConfig` and
are applied with kfp-kubernetes; the workspace path is the PVC's mount path, baked in at compile
time so the two cannot disagree. KFP's local runner ignores Kubernetes platform settings,
accelerators and retries (checked by tests/pipelines), so the local run executes this very
pipeline; `build_training_pipeline(None)` gives one without them.

Regenerate the golden compiled copy beside this file after a deliberate change:
    .venv/bin/miipher2 pipeline compile -o pipelines/training.yaml

(No `from __future__ import annotations` here: KFP reads the pipeline's real annotations.)
"""

from typing import List, Optional

from kfp import dsl

from components import (close_pipeline_run, evaluate, finetune_vocoder, pretrain_vocoder, register, reject_dataset,
                        train_pa, validate_data)
from components._base import name_image
from miipher2.launch import Launch
from pipelines.cluster import (LOCAL_WORKSPACE, TRAINING_STEPS, ClusterConfig, on_cpu, on_gpu, with_credentials,
                               with_retries, with_workspace)

PIPELINE_NAME = "miipher2-training"


def build_training_pipeline(cluster: Optional[ClusterConfig] = ClusterConfig(), workspace: str = LOCAL_WORKSPACE):
    """The pipeline function, with `cluster`'s Kubernetes settings (None: none at all, and the
    steps share `workspace` instead of the cluster's workspace volume)."""
    workspace = cluster.workspace_mount if cluster else workspace
    launch = {step: (cluster.launch(step) if cluster else Launch()).to_json() for step in TRAINING_STEPS}

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
    ):
        closing = close_pipeline_run(experiment=experiment, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
                                     ).set_display_name("close MLflow run")
        with dsl.ExitHandler(closing, name="run"):
            validated = validate_data(
                dvc_repo=dvc_repo, dataset_revision=dataset_revision, dvc_remote=dvc_remote, workspace=workspace,
                training_preset=training_preset, backbone=backbone, overrides=overrides, experiment=experiment,
                kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ).set_display_name("validate dataset")
            # validate_data returns a single bool (its "Output") rather than a NamedTuple field: KFP
            # 2.17's local runner resolves a condition on another task's output only under that name.
            with dsl.If(validated.outputs["Output"] == True, name="dataset-valid"):  # noqa: E712 — a KFP condition
                data = validated.outputs["dataset"]
                adapters = train_pa(dataset=data, training_preset=training_preset, overrides=overrides,
                                    workspace=workspace, launch=launch["train_pa"],
                                    ).set_display_name("stage 1: parallel adapters")
                vocoder = pretrain_vocoder(dataset=data, training_preset=training_preset, overrides=overrides,
                                           workspace=workspace, launch=launch["pretrain_vocoder"],
                                           ).set_display_name("stage 2: vocoder pretraining")
                model = finetune_vocoder(dataset=data, adapters=adapters.outputs["adapters"],
                                         vocoder=vocoder.outputs["vocoder"], training_preset=training_preset,
                                         overrides=overrides, workspace=workspace, launch=launch["finetune_vocoder"],
                                         ).set_display_name("stage 3: vocoder fine-tuning")
                evaluation = evaluate(dataset=data, model=model.outputs["model"], split=eval_split,
                                      max_utterances=eval_max_utterances).set_display_name("evaluate")
                registered = register(dataset=data, model=model.outputs["model"],
                                      evaluation=evaluation.outputs["metrics"],
                                      model_name=model_name).set_display_name("register (challenger)")
            with dsl.Else(name="dataset-invalid"):
                rejected = reject_dataset(report=validated.outputs["report"]).set_display_name("reject dataset")

        # KFP's cache stays off: each step opens a fresh MLflow child run of this run's parent,
        # validate resolves a moving git revision, register changes the registry; a cache hit
        # would serve another run's result under this run's lineage or skip a side effect.
        # Training stages are reused below KFP instead, keyed by what they depend on
        # (miipher2.reuse), and a preempted step is retried and resumes from the workspace.
        training = {"train_pa": adapters, "pretrain_vocoder": vocoder, "finetune_vocoder": model}
        steps = [validated, *training.values(), evaluation, registered, rejected, closing]
        for task in steps:
            task.set_caching_options(False)
            name_image(task)
        if cluster is None:
            return
        for task in steps:
            with_credentials(task, cluster)
        for step, task in training.items():
            if cluster.launch(step).multi_node:  # the stage's pods are a PyTorchJob's; this one follows it
                on_cpu(task, cluster)
                with_retries(task, cluster)
            else:
                on_gpu(task, cluster, gpus=cluster.gpus_per_step)
        on_gpu(evaluation, cluster)
        for task in (validated, registered, rejected, closing):
            on_cpu(task, cluster)
        for task in (validated, *training.values(), evaluation):  # the steps that touch data
            with_workspace(task, cluster)

    return training_pipeline


training_pipeline = build_training_pipeline()
