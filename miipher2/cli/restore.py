"""`miipher2 restore INPUT... -o OUTDIR --model DIR`: restore audio files with a trained model.

Exit code 0 when every input was restored, 1 when any failed (each failure is printed to
stderr with the file and the reason), 2 when the command cannot start (bad model, bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MODEL_ENV = "MIIPHER2_MODEL"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="restore degraded speech files with a trained Miipher-2 model",
        description="Restore audio files, folders (searched recursively for anything libsndfile reads) or "
                    "manifest CSVs. Any rate and channel count is accepted (downmixed, resampled to 16 kHz); "
                    "long files are restored in overlapping chunks. Outputs mirror the inputs' relative paths "
                    "under OUTDIR.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="audio file, folder, or manifest .csv")
    parser.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV), metavar="DIR",
                        help=f"model directory written by Restorer.save_pretrained (default: ${MODEL_ENV})")
    parser.add_argument("--backbone-source", default=None, metavar="HUB_ID_OR_DIR",
                        help="where to load the frozen encoder from, overriding the model's config (e.g. a local mirror)")
    parser.add_argument("--allow-other-backbone", action="store_true",
                        help="load even when the encoder's weights differ from those the adapters were trained on")
    parser.add_argument("--batch-size", type=int, default=8, help="chunks run together, and files loaded together (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="longest piece restored at once (default: %(default)s)")
    parser.add_argument("--overlap-seconds", type=float, default=1.0, help="cross-faded overlap between pieces (default: %(default)s)")
    parser.add_argument("--format", choices=("wav", "flac"), default="wav", help="output format, 16-bit (default: %(default)s)")
    parser.set_defaults(func=run_restore)


def run_restore(args: argparse.Namespace) -> int:
    if not args.model:
        print(f"error: no model: pass --model DIR or set {MODEL_ENV}", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.chunk_seconds <= args.overlap_seconds or args.overlap_seconds < 0:
        print("error: need --batch-size >= 1 and 0 <= --overlap-seconds < --chunk-seconds", file=sys.stderr)
        return 2

    from transformers.utils import logging as hf_logging

    from miipher2.model.restore_files import RestoreReport, collect_jobs, restore_files
    from miipher2.model.restorer import Restorer

    hf_logging.disable_progress_bar()
    try:
        restorer = Restorer.from_pretrained(args.model, args.device, backbone_source=args.backbone_source,
                                            allow_other_backbone=args.allow_other_backbone,
                                            chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
                                            batch_size=args.batch_size)
    except (OSError, ValueError) as err:
        print(f"error: cannot load model {args.model}: {err}", file=sys.stderr)
        return 2

    report = RestoreReport()
    jobs = collect_jobs(args.inputs, report)
    restore_files(restorer, jobs, args.output_dir, files_per_batch=args.batch_size, output_format=args.format, report=report)
    for source, reason in report.failed:
        print(f"error: {source}: {reason}", file=sys.stderr)
    total = len(report.restored) + len(report.failed)
    print(f"restored {len(report.restored)} of {total} input(s) into {args.output_dir}")
    return 1 if report.failed else 0
