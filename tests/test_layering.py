"""The architecture's arrows point one way; an import against them is a test failure.

Imports are read from the source (lazy imports inside functions included), not from what a
process happens to have loaded.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package_dir: Path) -> dict[str, set[str]]:
    """file -> every module it imports anywhere in its body."""
    found = {}
    for file in sorted(package_dir.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(file.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{file} imports {name}" for file, names in imported_modules(ROOT / package).items()
            for name in sorted(names) if name.split(".")[0] in forbidden or name.startswith(forbidden)]


def test_the_library_knows_no_kubeflow():
    # The command line is the outermost layer: `miipher2 pipeline ...` drives the pipelines.
    library = [line for line in offenders("miipher2", ("kfp", "components", "pipelines"))
               if not line.startswith("miipher2/cli/")]
    assert library == []


def test_evaluation_does_not_know_the_registry():
    # The registry evaluates challengers to gate promotions; the reverse arrow made a cycle.
    assert offenders("miipher2/evaluate", ("miipher2.registry",)) == []


def test_the_library_does_not_call_its_command_line():
    library = [line for line in offenders("miipher2", ("miipher2.cli",)) if not line.startswith("miipher2/cli/")]
    assert library == []


def test_the_atomic_write_recipe_lives_in_one_place():
    # The recipe: a temporary file or folder renamed over the target. Scratch folders are fine.
    def writes_atomically(text: str) -> bool:
        return bool(re.search(r"mks?temp|mkdtemp", text)) and bool(re.search(r"os\.(replace|rename)\(", text))

    copies = [str(f.relative_to(ROOT)) for package in ("miipher2", "pipelines", "components")
              for f in (ROOT / package).rglob("*.py") if f.name != "files.py" and writes_atomically(f.read_text())]
    assert copies == []
