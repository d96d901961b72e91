"""Where a training stage runs: in this process, under torchrun in this pod, or as a multi-node
Kubeflow PyTorchJob. Each runs the same command, `miipher2 train <stage> ...` (`stage_arguments`).

    Launch()                                  # one process, here
    Launch(processes=4)                       # torchrun --nproc_per_node 4 in this pod (one per GPU)
    Launch(processes=8, nodes=4, job={...})   # a PyTorchJob: 4 pods x 8 GPUs (pytorchjob.JobSettings)

A pipeline step passes its `Launch` as JSON (`Launch.from_json`): the cluster settings are
chosen when the pipeline is compiled (`pipelines.cluster.ClusterConfig`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 143  # `miipher2 train` stopped by SIGTERM after a checkpoint: run it again to continue


@dataclass(frozen=True)
class Launch:
    processes: int = 1   # training processes per node (torchrun --nproc_per_node): one per GPU
    nodes: int = 1       # more than one: the stage runs as a Kubeflow PyTorchJob of `nodes` pods
    job: dict[str, Any] = field(default_factory=dict)  # the PyTorchJob's pod settings (pytorchjob.JobSettings)

    def __post_init__(self):
        if self.processes < 1 or self.nodes < 1:
            raise ValueError(f"a launch needs at least one process and one node, got {self}")
        if self.nodes > 1 and not self.job:
            raise ValueError("a multi-node launch needs the PyTorchJob's pod settings (`job`)")

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Launch:
        return cls(**json.loads(text)) if text else cls()


def stage_arguments(stage: str, *, config_file: str, data_root: str, out_dir: str, stage1_dir: str | None = None,
                    stage2_dir: str | None = None, mlflow_run_id: str | None = None) -> list[str]:
    """`miipher2` arguments that train `stage` into `out_dir`, continuing its checkpoints there.

    `--resume yes`: the launcher's output directory is named by the stage's inputs and config
    (`miipher2.reuse.stage_key`), so any checkpoint in it belongs to this very training."""
    args = ["train", stage, "--config", config_file, "--data", data_root, "--out", out_dir, "--resume", "yes"]
    if stage == "stage3":
        args += ["--stage1", str(stage1_dir), "--stage2", str(stage2_dir)]
    if mlflow_run_id:
        args += ["--mlflow-run-id", mlflow_run_id]
    return args


def run_stage(stage: str, config, data_root: str, out_dir: Path, launch: Launch, *, tracker,
              earlier: dict[str, str] | None = None, job_name: str = "", labels: dict[str, str] | None = None) -> None:
    """Train `stage` into `out_dir`, continuing its checkpoints: in this process, under torchrun in
    this pod, or as a multi-node PyTorchJob named `job_name` (with `labels`), as `launch` says.

    `earlier`: stage 3's inputs {"stage1": dir, "stage2": dir}. An interrupted stage (SIGTERM)
    returns normally with its checkpoint saved; the caller sees it has no result yet."""
    earlier = earlier or {}
    if launch.processes == 1 and not launch.multi_node:
        from miipher2.train import stages

        trainer = {"stage1": stages.train_stage1, "stage2": stages.train_stage2, "stage3": stages.train_stage3}[stage]
        trainer(config, data_root, out_dir, tracker=tracker, resume=True,
                **{f"{name}_dir": path for name, path in earlier.items()})
        return
    from miipher2.files import atomic_write_text

    config_file = Path(out_dir) / "train-config.yaml"  # read by the other processes (or pods)
    atomic_write_text(config_file, config.to_yaml())
    arguments = stage_arguments(stage, config_file=str(config_file), data_root=str(data_root), out_dir=str(out_dir),
                                stage1_dir=earlier.get("stage1"), stage2_dir=earlier.get("stage2"),
                                mlflow_run_id=tracker.run_id)
    if launch.multi_node:
        _run_as_pytorchjob(job_name, arguments, launch, labels or {})
        return
    from miipher2.launch.torchrun import run_under_torchrun

    code = run_under_torchrun(arguments, launch.processes)
    if code not in (0, EXIT_INTERRUPTED):
        raise RuntimeError(f"{stage} under torchrun ({launch.processes} processes) failed with exit code {code}")


def _run_as_pytorchjob(name: str, arguments: list[str], launch: Launch, labels: dict[str, str]) -> None:
    from kubernetes import client
    from kubernetes import config as kubeconfig

    from miipher2.hub import offline_environment
    from miipher2.launch.pytorchjob import JobSettings, current_namespace, label_value, pytorchjob_manifest, run_job

    kubeconfig.load_incluster_config()  # the step's pod: its service account may create PyTorchJobs
    settings = JobSettings(**{**launch.job, "gpus_per_node": launch.processes})
    manifest = pytorchjob_manifest(name, current_namespace(), arguments, nodes=launch.nodes, settings=settings,
                                   env=offline_environment(),
                                   labels={key: label_value(value) for key, value in labels.items()})
    run_job(client.CustomObjectsApi(), manifest)
