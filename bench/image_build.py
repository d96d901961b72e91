"""How long the images take to build here, cold and cached, and how large they are.

    .venv/bin/python -m bench.image_build            # with whatever the engine has cached
    .venv/bin/python -m bench.image_build --cold     # first removes our images and their layers

Builds what the container tests build (infra/image/build.py on the local CPU base): the Debian
root file system, the Python and torch bases, the pipeline image, the pipeline image again with
nothing changed, and the MLflow server image. `--cold` removes every image this repository makes
(names under ghcr.io/miipher2/ and localhost/miipher2-) and the engine's unused layers: what a
machine without the engine's store (e.g. a fresh CI machine) pays.
"""

from __future__ import annotations

import argparse
import os
import time

from tests.containers import build


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def remove_our_images(engine: build.Engine) -> None:
    listed = engine("images", "--format", "{{.Repository}}:{{.Tag}}", capture=True).stdout.split()
    ours = [ref for ref in listed if ref.startswith(("ghcr.io/miipher2/", "localhost/miipher2-"))]
    if ours:
        engine("rmi", "--force", *ours, capture=True)
    engine("image", "prune", "--force", capture=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="remove our images and unused layers first")
    args = parser.parse_args()
    from components._base import IMAGE

    engine = build.Engine.find()
    if engine is None:
        raise SystemExit("no container engine (docker, or podman as root)")
    if args.cold:
        remove_our_images(engine)
    steps = [
        ("Debian root file system (mmdebstrap + import)", lambda: build.ensure_debian_image(engine)),
        ("Python and CPU torch bases", lambda: build.ensure_local_base(engine, with_torch=True)),
        ("pipeline image", lambda: build.build_pipeline_image(engine, IMAGE, local_base=True)),
        ("pipeline image again, nothing changed", lambda: build.build_pipeline_image(engine, IMAGE, local_base=True)),
        ("MLflow server image (+ Python base)", lambda: build.build_mlflow_image(engine, local_base=True)),
    ]
    rows = []
    for name, step in steps:
        before = _load()
        started = time.perf_counter()
        step()
        rows.append((name, time.perf_counter() - started, before, _load()))
    print(f"\nengine {engine.program}, {os.cpu_count()} CPUs, {'cold' if args.cold else 'as cached'}")
    print("| step | seconds | load before | load after |\n|---|---:|---|---|")
    for name, seconds, before, after in rows:
        print(f"| {name} | {seconds:.0f} | {before} | {after} |")
    print("\n| image | size |\n|---|---:|")
    mlflow = build.locked_version("mlflow", build.MLFLOW_DIR / "requirements.txt")
    for image in (IMAGE, f"{build.MLFLOW_IMAGE}:{mlflow}", build.local_torch_base(), build.LOCAL_PYTHON_BASE,
                  build.DEBIAN_IMAGE):
        print(f"| {image} | {int(engine.inspect(image, '{{.Size}}')) / 1e9:.2f} GB |")


if __name__ == "__main__":
    main()
