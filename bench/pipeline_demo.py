"""Wall time of the local demo pipeline run, and the share of it that is KFP overhead.

    .venv/bin/python -m bench.pipeline_demo [--set stage1.steps=10 ...] [--eval-max-utterances N]

Runs exactly what `make demo` runs (`miipher2 pipeline run --local`: demo corpus from this
repository's data.dvc, demo-cpu preset, a throwaway SQLite MLflow store) and splits the wall
time into the steps' library calls and the rest: one Python process per step starting and
importing the stack, KFP's executor and local orchestrator, artifact bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-max-utterances", type=int, default=0)
    args = parser.parse_args(argv)

    from miipher2.data.versioning import ensure_demo_dataset
    from pipelines.run import run_local

    repo = Path(__file__).resolve().parents[1]
    print(f"demo dataset: {ensure_demo_dataset(repo)}")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        params = {"dvc_repo": str(repo), "dataset_revision": "HEAD", "training_preset": "demo-cpu",
                  "overrides": args.overrides, "eval_max_utterances": args.eval_max_utterances,
                  "experiment": "bench", "model_name": "bench"}
        result = run_local(params, f"{tmp}/kfp", f"{tmp}/workspace")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load "
          f"{os.getloadavg()[0]:.1f}; overrides {args.overrides or 'none'}; completed: {result.ok}")
    print("| step | seconds inside the step |\n|---|---:|")
    for step, seconds in result.step_seconds.items():
        print(f"| {step} | {seconds:.1f} |")
    share = result.kfp_overhead_s / result.wall_s
    print(f"| **wall time** | **{result.wall_s:.1f}** |\n| KFP overhead | {result.kfp_overhead_s:.1f} ({share:.0%}) |")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
