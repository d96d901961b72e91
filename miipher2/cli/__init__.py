"""`miipher2` console script: one module per command group in this package.

Each command module exposes `register(subparsers)`, adding its subcommand(s) with a `func`
default that takes the parsed namespace and returns an exit code. Heavy imports (torch, mlflow,
kfp) happen inside those functions so that `miipher2 --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES: tuple[str, ...] = (
    "miipher2.cli.restore",
    "miipher2.cli.validate",
    "miipher2.cli.data",
    "miipher2.cli.pipeline",
    "miipher2.cli.evaluate",
    "miipher2.cli.registry",
    "miipher2.cli.train",
    "miipher2.cli.restore_corpus",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miipher2", description="Miipher-2 speech restoration: data, training, evaluation, pipelines.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
