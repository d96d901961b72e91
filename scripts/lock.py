"""Write the exact, tested dependency sets from what is installed in this environment (`make lock`).

    requirements.lock               run time: pyproject's dependencies and theirs (the image installs it)
    requirements-dev.lock           what only the tests and linters add: pyproject's `test` extra and theirs
    infra/mlflow/requirements.txt   the MLflow server image: mlflow, psycopg2-binary, boto3 and theirs

Each set is the closure of its roots over the installed packages' declared requirements, so a
package the code imports but pyproject does not declare is missing from the image, where the
container test imports everything. To add a dependency: declare it in pyproject.toml, install it
into .venv, run `make lock`.

    python scripts/lock.py            # rewrite the three files
    python scripts/lock.py --check    # exit 1 when a file differs from this environment
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from miipher2.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
MLFLOW_REQUIREMENTS = REPO / "infra" / "mlflow" / "requirements.txt"
MLFLOW_SERVER = ("mlflow", "psycopg2-binary", "boto3")  # the server, its PostgreSQL driver, S3 for artifacts
# Declared requirements left out on purpose, with why (everything installs with --no-deps).
EXCLUDED = {
    "encodec": "vocos imports it but we never use it, and its PyPI release is CC BY-NC 4.0 "
               "(miipher2/model/vocoders/_encodec.py stands in for it)",
}
HEADERS = {
    RUNTIME_LOCK: "# Exact, tested run-time dependency set (the pipeline image installs it). Regenerate with: make lock",
    DEV_LOCK: "# Exact, tested additions for tests and linters (not in the image). Regenerate with: make lock",
    MLFLOW_REQUIREMENTS: "# The MLflow server image's exact set (infra/mlflow/Dockerfile). Regenerate with: make lock",
}


def closure(roots: Iterable[str], installed: dict[str, importlib.metadata.Distribution]) -> dict[str, str]:
    """{name: version} of the roots and everything they require, extras and markers honoured."""
    pending = [Requirement(root) for root in roots]
    visited: set[tuple[str, frozenset[str]]] = set()
    found: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        key = canonicalize_name(requirement.name)
        if (key, frozenset(requirement.extras)) in visited:
            continue
        visited.add((key, frozenset(requirement.extras)))
        if key in EXCLUDED:
            continue
        if key not in installed:
            sys.exit(f"lock: {requirement} is required but not installed here; run `make setup`")
        dist = installed[key]
        found[dist.metadata["Name"]] = dist.version
        for text in dist.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra})
                                            for extra in {"", *requirement.extras}):
                pending.append(needed)
    return found


def lock_files() -> dict[Path, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():  # in sys.path order: the first one found is the one imported
        installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    runtime = closure(project["dependencies"], installed)
    development = {name: version for name, version in
                   closure(project["optional-dependencies"]["test"], installed).items() if name not in runtime}
    server = closure(MLFLOW_SERVER, installed)
    return {path: _render(HEADERS[path], pins)
            for path, pins in ((RUNTIME_LOCK, runtime), (DEV_LOCK, development), (MLFLOW_REQUIREMENTS, server))}


def _render(header: str, pins: dict[str, str]) -> str:
    # pip freeze's order and spelling, so that regenerating changes only the lines that changed.
    return header + "\n" + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins, key=str.lower))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, text in lock_files().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(REPO)))
        else:
            atomic_write_text(path, text)
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"lock: {', '.join(stale)} differ from this environment: run `make lock` "
              "(or `make setup` if the files are right and the environment is not)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
