"""`miipher2 data ...`: build the demo corpus and move dataset versions through DVC."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build the demo corpus; read dataset versions through DVC",
                                 description="Dataset commands: the deterministic demo corpus and its DVC versions.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    build = commands.add_parser("build-demo", help="build the multilingual demo corpus (deterministic)",
                                description="Synthesise the demo corpus (espeak-ng speech in 10 languages, LibriVox "
                                            "test recordings, noise and room banks, manifests, degraded val/test) "
                                            "into ROOT, replacing it only when the build is complete.")
    build.add_argument("--root", type=Path, default=Path("data"), help="dataset root to (re)build (default: %(default)s)")
    build.add_argument("--seed", type=int, default=0, help="seed for voices, levels, noise and rooms (default: %(default)s)")
    build.add_argument("--tiny", action="store_true", help="a seconds-long corpus for smoke tests (2 languages, 1 sentence)")
    build.add_argument("--workers", type=int, default=2, help="concurrent espeak-ng processes (default: %(default)s)")
    build.set_defaults(func=run_build_demo)

    ensure = commands.add_parser("ensure-demo", help="make data/ match data.dvc: keep, pull, or rebuild and push",
                                 description="Leave data/ alone when it matches data.dvc; else pull it from the "
                                             "DVC remote; else rebuild it, check the hash and push it.")
    ensure.add_argument("--repo", type=Path, default=Path("."), help="repository root holding data.dvc (default: %(default)s)")
    ensure.add_argument("--remote", default=None, help="DVC remote (default: the repository's default remote)")
    ensure.set_defaults(func=run_ensure_demo)

    pin = commands.add_parser("pin-demo", help="rebuild the demo corpus and make it the version data.dvc pins",
                              description="For deliberate changes to the corpus: rebuild data/, `dvc add` it, record "
                                          "the tool versions in data.dvc (meta: built_with) and `dvc push` it. "
                                          "Commit data.dvc afterwards.")
    pin.add_argument("--repo", type=Path, default=Path("."), help="repository root holding data.dvc (default: %(default)s)")
    pin.add_argument("--remote", default=None, help="DVC remote to push to (default: the repository's default remote)")
    pin.set_defaults(func=run_pin_demo)

    pull = commands.add_parser("pull", help="dvc pull the dataset tracked by data.dvc")
    pull.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: %(default)s)")
    pull.add_argument("--remote", default=None, help="DVC remote (default: the repository's default remote)")
    pull.set_defaults(func=run_pull)

    hashes = commands.add_parser("hashes", help="the dataset's DVC hash (and per-file md5s) at a git revision",
                                 description="Print DVC's directory hash of the dataset at REV; with --dest, also "
                                             "download that version there through DVC and verify every file.")
    hashes.add_argument("--repo", default=".", help="repository path or git URL (default: %(default)s)")
    hashes.add_argument("--rev", default=None, help="git revision (default: the workspace's HEAD)")
    hashes.add_argument("--remote", default=None,
                        help="DVC remote to read from (default: the platform's, MIIPHER2_DVC_REMOTE_URL, when set; "
                             "else the repository's default)")
    hashes.add_argument("--dest", type=Path, default=None, help="download the version here and list per-file md5s")
    hashes.set_defaults(func=run_hashes)


def run_build_demo(args: argparse.Namespace) -> int:
    from miipher2.data.demo import DemoBuildError, DemoConfig, build_demo

    config = DemoConfig.tiny(seed=args.seed, workers=args.workers) if args.tiny else DemoConfig(seed=args.seed, workers=args.workers)
    started = time.perf_counter()
    try:
        summary = build_demo(args.root, config)
    except DemoBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary)
    print(f"built in {time.perf_counter() - started:.1f} s")
    return 0


def run_ensure_demo(args: argparse.Namespace) -> int:
    from miipher2.data.versioning import DatasetVersionError, ensure_demo_dataset, workspace_md5

    try:
        outcome = ensure_demo_dataset(args.repo, remote=args.remote, progress=print)
        recorded, _ = workspace_md5(args.repo)
    except DatasetVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"demo dataset {recorded}: {outcome}")
    return 0


def run_pin_demo(args: argparse.Namespace) -> int:
    from miipher2.data.versioning import DatasetVersionError, pin_demo_dataset

    try:
        md5 = pin_demo_dataset(args.repo, remote=args.remote)
    except DatasetVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"data.dvc now pins {md5}; commit it: git add data.dvc && git commit")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from miipher2.data.versioning import DatasetVersionError, pull

    try:
        pull(args.repo, args.remote)
    except DatasetVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def run_hashes(args: argparse.Namespace) -> int:
    from miipher2.data.git_credentials import git_credentials
    from miipher2.data.versioning import DatasetVersionError, dataset_md5, fetch_dataset, platform_remote

    remote, settings = platform_remote(args.remote)
    try:
        with git_credentials():
            if args.dest is None:
                print(json.dumps({"rev": args.rev, "md5": dataset_md5(args.repo, args.rev, remote=args.remote)}))
                return 0
            info = fetch_dataset(args.repo, args.rev, args.dest, remote=remote, remote_config=settings)
    except DatasetVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"rev": info.rev, "md5": info.md5, "path": str(info.path), "files": info.files}, indent=1))
    return 0
