"""The training pipeline: validate -> (train_pa || pretrain_vocoder) -> finetune_vocoder -> evaluate -> register.

    validate_data ──ok?──► train_pa ─────────┐
                     └──► pretrain_vocoder ──┴──► finetune_vocoder ──► evaluate ──► register

Everything after validation sits inside `dsl.If(valid)`: an invalid dataset ends the run before
any GPU pod is requested, and its report (a Markdown artifact) stays in the run for inspection.

Cluster settings (GPUs, node pools, Secrets, the workspace volume, /dev/shm, retries) come from a
`pipelines.cluster.ClusterConfig` and are applied with kfp-kubernetes. KFP's local runner ignores Kubernetes
platform settings, accelerators and retries (checked by tests/pipelines), so the local run
executes this very pipeline; `build_training_pipeline(None)` gives one without them.

Regenerate the golden compiled copy beside this file after a deliberate change:
    .venv/bin/miipher2 pipeline compile -o pipelines/training.yaml

(No `from __future__ import annotations` here: KFP reads the pipeline's real annotations.)
"""

from typing import List

from kfp import dsl

from components import evaluate, finetune_vocoder, pretrain_vocoder, register, train_pa, validate_data
from components._base import name_image
from pipelines.cluster import ClusterConfig, on_gpu, with_credentials, with_workspace

PIPELINE_NAME = "miipher2-training"


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
            name_image(task)
        if cluster is not None:
            for task in steps:
                with_credentials(task, cluster)
            for task in (adapters, vocoder, model, evaluation):
                on_gpu(task, cluster)
            for task in (validated, adapters, vocoder, model, evaluation):  # the steps that touch data
                with_workspace(task, cluster)

    return training_pipeline


training_pipeline = build_training_pipeline()
