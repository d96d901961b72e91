"""`miipher2 restore-corpus` and `miipher2 restoration-pipeline`: restore whole corpora.

    miipher2 restore-corpus data/manifests/train.csv --model models:/miipher2@champion -o restored/
    miipher2 restore-corpus s3://bucket/corpus/manifests/train.csv --model DIR -o out --shards 4 --shard-index 2
    miipher2 restoration-pipeline compile -o restoration.yaml
    miipher2 restoration-pipeline submit --host URL --manifest s3://... --model models:/miipher2@champion
    miipher2 restoration-pipeline run --local --manifest data/manifests/test.csv --model DIR --output-dir out

`restore-corpus` does the pipeline's work in one process (no KFP). Rerunning it skips files whose
input bytes, model and output are unchanged (docs/restoration.md). Exit codes: 0 everything
restored (and merged, unless other shards are still to run), 1 some file failed (each is
listed in the summary), 2 the run could not start (bad manifest, model or usage).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from miipher2.cli.pipeline import add_submit_arguments


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "restore-corpus", help="restore every file of a manifest (local or S3), resumably, with DNSMOS scores",
        description="Restore a corpus: split the manifest into shards, restore them in length-bucketed batches, "
                    "score each restored file with DNSMOS, and write OUTDIR/manifests/<name> plus "
                    "OUTDIR/summary.{json,md}. Files already restored with the same model from the same input "
                    "bytes are skipped.")
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV: a path or s3://bucket/key")
    parser.add_argument("--model", required=True, metavar="DIR_OR_URI",
                        help="model directory, or models:/NAME@alias / models:/NAME/VERSION (needs MLFLOW_TRACKING_URI)")
    parser.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR")
    _add_work_options(parser)
    parser.add_argument("--shard-index", type=int, default=None, metavar="I",
                        help="restore only shard I (for several processes or machines sharing OUTDIR); "
                             "the process finishing the last shard merges")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-score", action="store_true", help="skip DNSMOS scoring")
    parser.add_argument("--replace-plan", action="store_true",
                        help="replace an unfinished plan of other inputs in OUTDIR (refused otherwise: another "
                             "run may still be restoring it)")
    parser.set_defaults(func=run_restore_corpus)

    pipeline = subparsers.add_parser("restoration-pipeline", help="compile, submit or locally run the KFP restoration pipeline",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = pipeline.add_subparsers(dest="action", metavar="ACTION", required=True)
    compile_ = actions.add_parser("compile", help="write the compiled pipeline (KFP IR YAML)")
    compile_.add_argument("-o", "--output", default="restoration.yaml", help="output file (default: %(default)s)")
    compile_.add_argument("--no-cluster", action="store_true",
                          help="leave out the Kubernetes settings (GPUs, Secrets, volumes, retries)")
    compile_.add_argument("--parallelism", type=int, default=None, help="shard pods at once (default: 8)")
    compile_.set_defaults(func=_compile)

    submit = actions.add_parser("submit", help="start a run on a Kubeflow Pipelines endpoint")
    add_submit_arguments(submit)
    _add_pipeline_parameters(submit)
    submit.set_defaults(func=_submit)

    run = actions.add_parser("run", help="run the pipeline on this machine (KFP local runner)")
    run.add_argument("--local", action="store_true", required=True, help="required: KFP's local SubprocessRunner")
    run.add_argument("--pipeline-root", type=Path, default=Path("outputs/kfp"), help="KFP local run folders (default: %(default)s)")
    run.add_argument("--workspace", type=Path, default=Path("outputs/workspace"),
                     help="the steps' shared folder, as the workspace volume is on a cluster (default: %(default)s)")
    _add_pipeline_parameters(run)
    run.set_defaults(func=_run_local)


def _add_work_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=1, help="number of shards (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="files per model call, sorted by length (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="threads that fetch, hash, write and score beside the model (default: %(default)s)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="longest piece restored at once (default: %(default)s)")
    parser.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap (default: %(default)s)")
    parser.add_argument("--format", dest="output_format", choices=("wav", "flac"), default="wav",
                        help="output format, 16-bit (default: %(default)s)")


def _add_pipeline_parameters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline parameters")
    group.add_argument("--manifest", required=True, help="manifest CSV as the pods see it: s3://bucket/key or a path")
    group.add_argument("--model", default="models:/miipher2@champion", help="model (default: %(default)s)")
    group.add_argument("--output-dir", default=None,
                       help="output folder inside the workspace, relative to it or absolute as the pods see it "
                            "(default: <workspace>/restored/<corpus>/<run id>)")
    _add_work_options(group)


def run_restore_corpus(args: argparse.Namespace) -> int:
    if args.shards < 1 or args.batch_size < 1 or args.workers < 1:
        print("error: --shards, --batch-size and --workers must be >= 1", file=sys.stderr)
        return 2
    import logging

    from miipher2.corpus import Settings, restore_corpus

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = Settings(args.chunk_seconds, args.overlap_seconds, args.output_format)
        run = restore_corpus(args.manifest, args.model, args.output_dir, shards=args.shards, shard_index=args.shard_index,
                             batch_size=args.batch_size, workers=args.workers, device=args.device,
                             score=not args.no_score, settings=settings, replace_plan=args.replace_plan)
    except (OSError, ValueError, RuntimeError) as err:  # RegistryError is a RuntimeError
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = sum(len(r.failed) for r in run.results)
    if run.summary is None:
        print(f"shard(s) {[r.shard for r in run.results]} done ({failed} failure(s)); not merged yet: {run.waiting_for}")
        return 1 if failed else 0
    files, hours = run.summary.files, run.summary.hours
    for failure in run.summary.failures:
        print(f"error: {failure['source']}: {failure['reason']}", file=sys.stderr)
    print(f"restored {files['restored']} of {files['total']} file(s) ({files['restored_now']} now, {files['reused']} "
          f"already done), {hours['in']:.3f} h in, {hours['out']:.3f} h out; {files['failed']} failed")
    print(f"manifest: {run.summary.output_manifest}")
    print(f"summary: {Path(args.output_dir).absolute() / 'summary.md'}")
    return 1 if files["failed"] else 0


def _pipeline_params(args: argparse.Namespace) -> dict:
    params = {"manifest": args.manifest, "model": args.model, "shards": args.shards, "batch_size": args.batch_size,
              "workers": args.workers, "chunk_seconds": args.chunk_seconds, "overlap_seconds": args.overlap_seconds,
              "output_format": args.output_format}
    if args.output_dir:
        params["output_dir"] = args.output_dir
    return params


def _compile(args: argparse.Namespace) -> int:
    from pipelines.cluster import ClusterConfig
    from pipelines.restoration import DEFAULT_PARALLELISM, build_restoration_pipeline
    from pipelines.run import compile_pipeline

    pipeline = build_restoration_pipeline(None if args.no_cluster else ClusterConfig(),
                                          args.parallelism or DEFAULT_PARALLELISM)
    path = compile_pipeline(pipeline, args.output)
    print(f"compiled pipeline written to {path}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from miipher2.cli.pipeline import submit_from_arguments
    from pipelines.restoration import restoration_pipeline

    return submit_from_arguments(args, restoration_pipeline, _pipeline_params(args))


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.restoration import run_restoration_locally

    params = _pipeline_params(args)
    if not params["manifest"].startswith("s3://"):
        params["manifest"] = str(Path(params["manifest"]).absolute())
    if not params["model"].startswith("models:/"):
        params["model"] = str(Path(params["model"]).absolute())
    run_dir, outputs, wall = run_restoration_locally(params, args.pipeline_root, args.workspace)
    print(f"pipeline run folder: {run_dir} ({wall:.0f} s)")
    if "merge-shards" not in outputs:
        print("the pipeline failed before the merge; see the step logs above", file=sys.stderr)
        return 1
    output_dir = outputs["plan-shards"]["artifacts"]["plan"]["artifacts"][0]["metadata"]["output_dir"]
    print(f"summary: {Path(output_dir) / 'summary.md'}")
    return 0
