"""Derive the image's requirement file from requirements.lock: the same exact pins, minus torch.

The base image (see the Dockerfile's FROM) already holds the CUDA build of the torch version the
lock pins; the lock's `torch==X+cpu` is this CPU machine's wheel. Run after `make lock`:

    .venv/bin/python infra/image/requirements.py        # rewrites infra/image/requirements.txt

tests/pipelines/test_image.py fails when the two files disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE.parents[1] / "requirements.lock"
OUTPUT = HERE / "requirements.txt"
PROVIDED_BY_BASE_IMAGE = {"torch"}
HEADER = "# Generated from requirements.lock by infra/image/requirements.py: do not edit.\n"


def _name(line: str) -> str:
    return re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def image_requirements(lock_text: str) -> str:
    pins = [line.strip() for line in lock_text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    return HEADER + "".join(f"{pin}\n" for pin in pins if _name(pin) not in PROVIDED_BY_BASE_IMAGE)


def main() -> int:
    tmp = OUTPUT.with_name(OUTPUT.name + ".tmp")
    tmp.write_text(image_requirements(LOCK.read_text()))
    tmp.replace(OUTPUT)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
