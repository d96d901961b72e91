"""`miipher2 pipeline compile | upload | submit | run --local`: the training pipeline from the command line.

    miipher2 pipeline compile -o training.yaml
    miipher2 pipeline upload --host https://kfp.example.com --package training.yaml --version "$GIT_SHA"
    miipher2 pipeline submit --host https://kfp.example.com --dvc-repo https://github.com/org/miipher2 \
        --namespace miipher2 --service-account miipher2-pipeline
    miipher2 pipeline run --local                  # the demo: demo corpus, demo-cpu preset, local MLflow

`submit` checks that the Kubeflow Pipelines backend is recent enough (>= 2.15, see
pipelines/cluster.py) before it creates anything.

`run --local` without `--dvc-repo` uses this repository's `data.dvc` (building or pulling the
demo corpus first when needed), a SQLite MLflow store at `<repo>/mlflow.db` unless
MLFLOW_TRACKING_URI is set, and puts everything it writes under `<repo>/outputs/`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

DEMO_PRESET = "demo-cpu"


def register(subparsers) -> None:
    parser = subparsers.add_parser("pipeline", help="compile, submit or locally run the Kubeflow training pipeline",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    compile_ = actions.add_parser("compile", help="write the compiled pipeline (KFP IR YAML)")
    compile_.add_argument("-o", "--output", default="training.yaml", help="output file (default: %(default)s)")
    compile_.add_argument("--no-cluster", action="store_true",
                          help="leave out the Kubernetes settings (GPUs, Secrets, volumes, retries)")
    compile_.add_argument("--image", default=None, metavar="REF",
                          help="the image every step runs in, best pinned by digest (NAME@sha256:...) so that the "
                               "compiled pipeline records exactly which image it expects; after pushing: "
                               "docker inspect --format '{{index .RepoDigests 0}}' IMAGE "
                               "(default: $MIIPHER2_IMAGE, else the tag in components/_base.py)")
    compile_.set_defaults(func=_compile)

    upload = actions.add_parser("upload", help="upload a compiled pipeline as a new version on a KFP endpoint")
    upload.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    upload.add_argument("--token", default=None, help="bearer token for the KFP API (default: $KFP_TOKEN)")
    upload.add_argument("--package", required=True, help="compiled pipeline YAML (from `compile`)")
    upload.add_argument("--name", default="miipher2-training", help="KFP pipeline name (default: %(default)s)")
    upload.add_argument("--version", required=True, help="version name, e.g. the git commit")
    upload.set_defaults(func=_upload)

    submit = actions.add_parser("submit", help="start a run on a Kubeflow Pipelines endpoint")
    add_submit_arguments(submit)
    _add_pipeline_parameters(submit, local=False)
    submit.set_defaults(func=_submit)

    run = actions.add_parser("run", help="run the pipeline on this machine (KFP local runner)")
    run.add_argument("--local", action="store_true", required=True,
                     help="required: run with KFP's local SubprocessRunner in this Python environment")
    run.add_argument("--output-dir", default=None, help="where runs, workspace and reports go (default: <repo>/outputs)")
    run.add_argument("--processes", type=int, default=1,
                     help="training processes per stage (torchrun; gloo on CPU), as gpus_per_step does on a cluster")
    _add_pipeline_parameters(run, local=True)
    run.set_defaults(func=_run_local)


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how `submit` starts a run (shared by both pipelines' command lines)."""
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    parser.add_argument("--token", default=None,
                        help="bearer token for the KFP API (default: $KFP_TOKEN; prefer the variable, "
                             "command lines are visible to other users)")
    parser.add_argument("--kfp-experiment", default=None, help="KFP experiment to file the run under")
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--namespace", default=None,
                        help="namespace (Kubeflow profile) to run in; it must hold the workspace PVC and Secrets "
                             "(infra/k8s: miipher2)")
    parser.add_argument("--service-account", default=None,
                        help="service account of the run's pods (infra/k8s: miipher2-pipeline; default: KFP's)")


def submit_from_arguments(args: argparse.Namespace, pipeline_func, params: dict) -> int:
    """Submit `pipeline_func` with `params` as `add_submit_arguments` describes; prints the run id."""
    from pipelines.run import BackendTooOld, submit

    token = args.token or os.environ.get("KFP_TOKEN") or None
    try:
        run_id = submit(args.host, pipeline_func, params, token=token, experiment=args.kfp_experiment,
                        run_name=args.run_name, namespace=args.namespace, service_account=args.service_account)
    except BackendTooOld as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"submitted run {run_id} to {args.host}")
    return 0


def _add_pipeline_parameters(parser: argparse.ArgumentParser, local: bool) -> None:
    group = parser.add_argument_group("pipeline parameters")
    group.add_argument("--dvc-repo", required=not local,
                       help="git repository holding data.dvc (URL or path)" + (" (default: this repository)" if local else ""))
    group.add_argument("--dataset-revision", default="HEAD" if local else "main",
                       help="git revision of data.dvc (default: %(default)s)")
    group.add_argument("--dvc-remote", default="", help="DVC remote name (default: the repository's default remote)")
    group.add_argument("--training-preset", default=DEMO_PRESET if local else "paper",
                       help="training preset or YAML file (default: %(default)s)")
    group.add_argument("--backbone", default="", help="backbone preset (default: the training preset's)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="training config override, e.g. --set stage1.steps=100 (repeatable)")
    group.add_argument("--experiment", default="miipher2-training", help="MLflow experiment (default: %(default)s)")
    group.add_argument("--model-name", default="miipher2", help="registered model name (default: %(default)s)")
    group.add_argument("--eval-split", default="test", help="evaluation split (default: %(default)s)")
    group.add_argument("--eval-max-utterances", type=int, default=0, help="cap on evaluated utterances (0: all)")


def _pipeline_params(args: argparse.Namespace) -> dict:
    return {
        "dvc_repo": args.dvc_repo, "dataset_revision": args.dataset_revision, "dvc_remote": args.dvc_remote,
        "training_preset": args.training_preset, "backbone": args.backbone, "overrides": list(args.overrides),
        "experiment": args.experiment, "model_name": args.model_name, "eval_split": args.eval_split,
        "eval_max_utterances": args.eval_max_utterances,
    }


def _compile(args: argparse.Namespace) -> int:
    from pipelines.cluster import ClusterConfig
    from pipelines.run import compile_pipeline
    from pipelines.training import build_training_pipeline

    try:
        path = compile_pipeline(build_training_pipeline(None if args.no_cluster else ClusterConfig()), args.output,
                                image=args.image)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"compiled pipeline written to {path}" + (f" (image {args.image})" if args.image else ""))
    return 0


def _upload(args: argparse.Namespace) -> int:
    from pipelines.run import upload

    token = args.token or os.environ.get("KFP_TOKEN") or None
    pipeline_id, version_id = upload(args.host, args.package, args.name, args.version, token=token)
    print(f"uploaded {args.package} as version {args.version!r} ({version_id}) of pipeline {args.name} ({pipeline_id})")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipelines.training import training_pipeline

    return submit_from_arguments(args, training_pipeline, _pipeline_params(args))


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.cluster import ClusterConfig
    from pipelines.run import run_local

    repo = _repo_root()
    out = Path(args.output_dir or repo / "outputs").absolute()
    if args.dvc_repo is None:
        from miipher2.data.versioning import ensure_demo_dataset

        args.dvc_repo = str(repo)
        print(f"demo dataset: {ensure_demo_dataset(repo)}")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    result = run_local(_pipeline_params(args), out / "kfp", out / "workspace",
                       ClusterConfig(gpus_per_step=args.processes))
    _print_summary(result, os.environ["MLFLOW_TRACKING_URI"], args.experiment)
    return 0 if result.ok else 1


def _print_summary(result, tracking_uri: str, experiment: str) -> None:
    print()
    print(f"pipeline run folder: {result.run_dir}")
    print(f"wall time {result.wall_s:.0f} s; inside the steps {sum(result.step_seconds.values()):.0f} s; "
          f"KFP overhead {result.kfp_overhead_s:.0f} s ({100 * result.kfp_overhead_s / max(result.wall_s, 1e-9):.0f}%)")
    validation = result.artifact("validate-data", "report")
    if validation:
        print(f"validation report: {validation}")
    if result.valid is False:
        print("the dataset failed validation: nothing was trained or registered (see the report above)")
    learning = learning_summary(result.outputs)
    if learning:
        print("what training learnt, scored on held-out val pairs (first -> best; curves in MLflow, val/*):")
        print("\n".join(f"  {line}" for line in learning))
    report = result.artifact("evaluate", "report_html")
    if report:
        print(f"evaluation report: {report}")
    registered = result.outputs.get("register", {}).get("parameterValues", {})
    if registered:
        print(f"registered model: {registered.get('model_name')} version {registered.get('version')} (alias challenger)")
    if not result.ok and result.valid is not False:
        print("the pipeline failed; see the step logs above", file=sys.stderr)
    if tracking_uri.startswith(("sqlite:", "postgresql:", "mysql:")):
        print(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    else:
        print(f"MLflow tracking server: {tracking_uri}")
    link = _experiment_link(tracking_uri, experiment)
    if link:
        print(f"this experiment's runs: {link}")


def _experiment_link(tracking_uri: str, experiment: str) -> str:
    import mlflow

    from miipher2.tracking import ui_url

    try:
        found = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 — a summary line, not worth failing a finished run
        return ""
    return ui_url(tracking_uri, found.experiment_id) if found else ""


# task, metric prefix, what it trains, the validation scores shown (gap closed as a percentage)
_TRAINING_TASKS = (("train-pa", "stage1", "adapters (stage 1)", ("loss", "gap_closed")),
                   ("pretrain-vocoder", "stage2", "vocoder on clean features (stage 2)", ("mel", "mrstft")),
                   ("finetune-vocoder", "stage3", "vocoder on cleaned features (stage 3)", ("mel", "mrstft")))


def learning_summary(outputs: dict) -> list[str]:
    """One line per training step from its KFP metrics: first and best validation scores."""
    lines = []
    for task, stage, label, names in _TRAINING_TASKS:
        entries = outputs.get(task, {}).get("artifacts", {}).get("metrics", {}).get("artifacts", [])
        metrics = entries[0].get("metadata", {}) if entries else {}
        if f"{stage}.val_best_step" not in metrics:
            continue
        parts = []
        for name in names:
            first, best = metrics.get(f"{stage}.val_first/{name}"), metrics.get(f"{stage}.val_best/{name}")
            if first is None or best is None:
                continue
            shown = (f"{100 * first:.1f}% -> {100 * best:.1f}%" if name == "gap_closed" else f"{first:.3f} -> {best:.3f}")
            parts.append(f"{name.replace('_', ' ')} {shown}")
        lines.append(f"{label}: {', '.join(parts)} (best at step {int(metrics[f'{stage}.val_best_step'])})")
    return lines


def _repo_root() -> Path:
    """The git work tree we are run from (for data.dvc), else the current directory."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()
