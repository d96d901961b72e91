"""The PyTorchJobs' commands, parsed by the real `miipher2` parser and run on tiny data.

Each stage job runs `torchrun --no-python miipher2 <args>`; torchrun (tested in
test_policies.py) hands `<args>` to the `miipher2` console script unchanged. Here those args,
with the workspace mount replaced by a temporary directory, are parsed by `build_parser()` and
executed in this process, stage after stage, as one torchrun worker would execute them. A
restarted pod runs the same command again: it must continue from its checkpoints, and refuse
checkpoints written with another configuration.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from miipher2.cli import build_parser, main
from tests.infra.conftest import STAGES
from tests.train.conftest import make_corpus, tiny_overrides

WORKSPACE = "/workspace"


def command(job: dict) -> list[str]:
    (args,) = {tuple(spec["template"]["spec"]["containers"][0]["args"])
               for spec in job["spec"]["pytorchReplicaSpecs"].values()}  # every pod runs the same command
    return list(args)


def on(workspace, args: list[str]) -> list[str]:
    return [str(workspace) + arg[len(WORKSPACE):] if arg.startswith(WORKSPACE) else arg for arg in args]


@pytest.mark.parametrize("env", ("dev", "prod"))
@pytest.mark.parametrize("stage", STAGES)
def test_stage_command_parses_into_a_complete_training_run(stage_job, env, stage):
    args = build_parser().parse_args(command(stage_job(env, stage)))
    assert (args.command, args.train_command) == ("train", f"stage{stage}")
    assert args.config == f"{WORKSPACE}/configs/train.yaml"
    assert args.data == f"{WORKSPACE}/data"
    assert args.out == f"{WORKSPACE}/training/stage{stage}"
    assert args.resume == "auto", "a restarted pod must continue from its own checkpoints"
    if stage == 3:
        assert (args.stage1, args.stage2) == (f"{WORKSPACE}/training/stage1", f"{WORKSPACE}/training/stage2")
    outputs = {command(stage_job(env, n))[command(stage_job(env, n)).index("--out") + 1] for n in STAGES}
    assert len(outputs) == len(STAGES), "each stage writes its own output directory"


@pytest.mark.slow
def test_stage_commands_train_all_three_stages_and_a_restart_resumes(stage_job, tmp_path, capsys):
    workspace = tmp_path / "workspace"
    make_corpus(workspace / "data")
    config = workspace / "configs" / "train.yaml"
    config.parent.mkdir(parents=True)
    tiny = tiny_overrides(tmp_path / "cache") + ["stage1.steps=2", "stage2.steps=1", "stage3.steps=1",
                                                 "stage1.checkpoint_every=1"]
    overrides = [f"--set={item}" for item in tiny]
    config.write_text(yaml.safe_dump({"base": "demo-cpu"}))

    for stage in STAGES:
        assert main(on(workspace, command(stage_job("dev", stage))) + overrides) == 0, capsys.readouterr().err
    results = {n: json.loads((workspace / "training" / f"stage{n}" / "result.json").read_text()) for n in STAGES}
    assert [results[n]["step"] for n in STAGES] == [2, 1, 1]
    assert len({r["encoder_identity"] for r in results.values()}) == 1

    # The pod restarts (preemption, node failure) after its last checkpoint: same command, same config.
    stage1 = workspace / "training" / "stage1"
    (stage1 / "result.json").unlink()
    shutil.rmtree(stage1 / "checkpoints" / "step-00000002")
    assert main(on(workspace, command(stage_job("dev", 1))) + overrides) == 0, capsys.readouterr().err
    resumed = json.loads((stage1 / "result.json").read_text())
    assert resumed["step"] == 2

    # Checkpoints of another configuration are never continued silently.
    config.write_text(yaml.safe_dump({"base": "demo-cpu", "stage1": {"lr": 5e-4}}))
    assert main(on(workspace, command(stage_job("dev", 1))) + overrides) == 2
    from miipher2.train.config import load_config

    assert f"stage1.lr: {load_config('demo-cpu').stage1.lr} -> 0.0005" in capsys.readouterr().err
