"""`miipher2 train ...`: the three stages, export, and the tools around them.

    miipher2 train stage1 --config demo-cpu --data data --out runs/stage1 [--set stage1.steps=100] [--resume yes|no]
    miipher2 train stage2 --config demo-cpu --data data --out runs/stage2
    miipher2 train stage3 --config demo-cpu --data data --out runs/stage3 \\
                          --stage1 runs/stage1 --stage2 runs/stage2 [--model-out runs/model]
    miipher2 train export --config demo-cpu --stage1 runs/stage1 --stage3 runs/stage3 --out runs/model
    miipher2 train show-config --config paper --set stage1.steps=10
    miipher2 train make-backbone --preset w2v-bert-2.0 --size tiny --out backbones/tiny

Every stage also runs under `torchrun --nproc_per_node N -m miipher2.cli train stageN ...`.

Resuming (`--resume`, default `auto`): a stage whose --out already holds checkpoints continues
from the latest one when they were written with the same configuration, so a restarted pod or a
rerun command picks up where it stopped; another configuration is refused, naming the fields
that differ (only `miipher2.reuse.NOT_LEARNING` may: device, threads, cache, loader workers).
`--resume yes` continues whatever changed (e.g. more steps); `--resume no` refuses to touch
existing checkpoints.

Exit codes: 0 done; 2 bad config or inputs; 143 stopped by SIGTERM after a checkpoint (run the
same command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from miipher2.launch import EXIT_INTERRUPTED

EXIT_BAD_INPUT = 2


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train the three Miipher-2 stages and export the model")
    commands = train.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    for name, help_text in (("stage1", "train the parallel adapters (degraded -> clean features)"),
                            ("stage2", "pretrain the vocoder on clean features"),
                            ("stage3", "fine-tune the vocoder on adapter-cleaned features of degraded audio")):
        parser = commands.add_parser(name, help=help_text)
        _config_arguments(parser)
        parser.add_argument("--data", required=True, help="dataset root (manifests/, clean/, noise/, rir/)")
        parser.add_argument("--out", required=True, help="output directory: checkpoints and final weights")
        parser.add_argument("--resume", nargs="?", const="yes", default="auto", choices=("auto", "yes", "no"),
                            help="auto (default): continue from the latest checkpoint in --out if it was written "
                                 "with the same configuration; yes (or the bare flag): continue regardless; "
                                 "no: refuse when --out holds checkpoints")
        parser.add_argument("--mlflow-run-id", default=None, metavar="RUN_ID",
                            help="log into this existing MLflow run (a pipeline step's) instead of a new one")
        if name == "stage3":
            parser.add_argument("--stage1", required=True, help="stage-1 output directory")
            parser.add_argument("--stage2", required=True, help="stage-2 output directory")
            parser.add_argument("--model-out", help="also export the final model directory here")
        parser.set_defaults(func=_run_stage, stage=name)

    export = commands.add_parser("export", help="write the Restorer model directory from stage-1 and stage-3 outputs")
    _config_arguments(export)
    export.add_argument("--stage1", required=True)
    export.add_argument("--stage3", required=True)
    export.add_argument("--out", required=True, help="model directory to write")
    export.set_defaults(func=_export)

    show = commands.add_parser("show-config", help="print the resolved configuration as YAML")
    _config_arguments(show)
    show.set_defaults(func=_show_config)

    backbone = commands.add_parser("make-backbone", help="write a randomly initialised backbone (offline demos, benchmarks)")
    backbone.add_argument("--preset", default="w2v-bert-2.0")
    backbone.add_argument("--size", default="tiny", choices=("tiny", "small", "base"))
    backbone.add_argument("--seed", type=int, default=0)
    backbone.add_argument("--out", required=True)
    backbone.set_defaults(func=_make_backbone)


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="demo-cpu", help="preset name (demo-cpu, paper) or a YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set stage1.steps=100 (repeatable)")
    parser.add_argument("--cache", help="cache directory (shorthand for --set cache.dir=...)")


def _load(args):
    from miipher2.train.config import load_config

    overrides = list(args.overrides) + ([f"cache.dir={args.cache}"] if args.cache else [])
    return load_config(args.config, overrides)


def _input_errors() -> tuple[type[Exception], ...]:
    from miipher2.train.config import ConfigError
    from miipher2.train.data import DataError
    from miipher2.train.loop import ResumeError
    from miipher2.train.stages import StageInputError

    return ConfigError, DataError, ResumeError, StageInputError


def _run_stage(args) -> int:
    from miipher2.train.distributed import shutdown_distributed
    from miipher2.train.stages import export_model, train_stage1, train_stage2, train_stage3

    try:
        config = _load(args)
        resume = _resume(args.resume, config, args.out)
        with _launcher_run(args) as tracker:
            if args.stage == "stage1":
                result = train_stage1(config, args.data, args.out, resume=resume, tracker=tracker)
            elif args.stage == "stage2":
                result = train_stage2(config, args.data, args.out, resume=resume, tracker=tracker)
            else:
                result = train_stage3(config, args.data, args.out, stage1_dir=args.stage1, stage2_dir=args.stage2,
                                      resume=resume, tracker=tracker)
        if args.stage == "stage3" and args.model_out and not result.interrupted and _is_main():
            export_model(config, args.stage1, args.out, args.model_out)
            print(f"model written to {args.model_out}", file=sys.stderr)
    except _input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        shutdown_distributed()
    if result.interrupted:
        print(f"{args.stage}: stopped at step {result.step} by SIGTERM; checkpoint {result.checkpoint_dir}. "
              "Run the same command again to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _is_main():
        print(result.to_json())
    return 0


def _resume(mode: str, config, out_dir: str) -> bool:
    """Whether to continue from the checkpoints in `out_dir` (see --resume)."""
    if mode != "auto":
        return mode == "yes"
    from miipher2.train.checkpoint import latest_checkpoint
    from miipher2.train.loop import ResumeError

    if latest_checkpoint(out_dir) is None:
        return False
    differences = config_differences(Path(out_dir) / "config.yaml", config)
    if differences:
        raise ResumeError(f"{out_dir} holds checkpoints of another configuration ({'; '.join(differences[:5])}): "
                          "choose another --out, or continue anyway with --resume yes")
    return True


def config_differences(recorded_file: Path, config) -> list[str]:
    """'field: recorded -> now' for every field that shapes learning and differs from `recorded_file`
    (runtime fields such as device, threads or cache location may differ)."""
    import yaml

    from miipher2.reuse import learning_settings
    from miipher2.train.config import ConfigError, TrainConfig

    try:
        recorded = learning_settings(TrainConfig.from_dict(yaml.safe_load(recorded_file.read_text())).to_dict())
    except (OSError, yaml.YAMLError, ConfigError) as err:
        return [f"the recorded {recorded_file.name} cannot be read ({err})"]
    now = learning_settings(config.to_dict())
    return [f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(recorded) | set(now))
            if recorded.get(key) != now.get(key)]


@contextlib.contextmanager
def _launcher_run(args):
    """The MLflow run named by --mlflow-run-id, opened on the main process (None: the stage opens its own)."""
    if not args.mlflow_run_id or not _is_main():
        yield None
        return
    from miipher2.tracking import tracked_run

    with tracked_run(args.stage, run_id=args.mlflow_run_id, system_metrics=False) as tracker:
        tracker.log_params({"world_size": int(os.environ.get("WORLD_SIZE", 1))})
        yield tracker


def _export(args) -> int:
    from miipher2.train.stages import export_model

    try:
        path = export_model(_load(args), args.stage1, args.stage3, args.out)
    except _input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(path)
    return 0


def _show_config(args) -> int:
    try:
        print(_load(args).to_yaml(), end="")
    except _input_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _make_backbone(args) -> int:
    from miipher2.train.backbone import make_random_backbone

    try:
        print(make_random_backbone(args.preset, args.out, size=args.size, seed=args.seed))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _is_main() -> bool:
    return int(os.environ.get("RANK", 0)) == 0
