"""`miipher2 validate DATASET_DIR`: check manifests and audio, write the report, exit 1 on any failure."""

from __future__ import annotations

import argparse
from pathlib import Path

from miipher2.data.file_checks import ValidationConfig
from miipher2.data.manifest import SPLITS

# Outside the dataset: writing into a DVC-tracked root would change its hash.
DEFAULT_REPORT_DIR = Path("reports") / "validation"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate a dataset's manifests and audio files",
        description="Validate manifests (pandera schema), rows (duplicates, speaker overlap) and every audio "
                    "file (path, decoding, format, rate, channels, duration, NaN/Inf, silence, clipping). "
                    "Every failure is collected; the exit code is 1 when anything failed, 2 on bad usage.",
    )
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", type=Path, help="dataset root holding manifests/")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), metavar="SPLIT", help="splits to check (default: %(default)s)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help=f"where validation.json and validation.md go (default: ./{DEFAULT_REPORT_DIR})")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="write manifests/{split}.clean.csv with only the rows that passed (originals untouched)")
    parser.add_argument("--workers", type=int, default=None, help="files checked in parallel (default: min(4, CPUs))")
    d = ValidationConfig()  # numpy + soundfile only: cheap enough for --help
    limits = parser.add_argument_group("what counts as valid")
    limits.add_argument("--sample-rate", type=int, default=d.sample_rate, help="expected rate in Hz; 0 accepts any (default: %(default)s)")
    limits.add_argument("--channels", type=int, default=d.channels, help="expected channels; 0 accepts any (default: %(default)s)")
    limits.add_argument("--min-duration", type=float, default=d.min_duration_s, metavar="S", help="(default: %(default)s)")
    limits.add_argument("--max-duration", type=float, default=d.max_duration_s, metavar="S", help="(default: %(default)s)")
    limits.add_argument("--duration-tolerance", type=float, default=d.duration_tolerance_s, metavar="S",
                        help="allowed gap between the manifest's duration_s and the file (default: %(default)s)")
    limits.add_argument("--silence-dbfs", type=float, default=d.silence_dbfs, help="peak below this is silence (default: %(default)s)")
    limits.add_argument("--max-clipped-ratio", type=float, default=d.max_clipped_ratio,
                        help="fraction of full-scale samples allowed (default: %(default)s)")
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from miipher2.data.validate import validate_dataset

    root: Path = args.dataset_dir
    if not root.is_dir():
        print(f"error: dataset directory {root} does not exist")
        return 2
    config = ValidationConfig(
        sample_rate=args.sample_rate or None,
        channels=args.channels or None,
        min_duration_s=args.min_duration,
        max_duration_s=args.max_duration,
        duration_tolerance_s=args.duration_tolerance,
        silence_dbfs=args.silence_dbfs,
        max_clipped_ratio=args.max_clipped_ratio,
    )
    report_dir = args.report_dir if args.report_dir is not None else DEFAULT_REPORT_DIR
    report = validate_dataset(root, splits=args.splits, config=config, report_dir=report_dir,
                              drop_invalid=args.drop_invalid, workers=args.workers)

    per_split = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    print(f"checked {report.rows_checked} rows ({per_split or 'no manifests read'}) in {report.elapsed_s:.1f} s")
    for check, count in report.counts.items():
        if count:
            print(f"  {check:<28} {count}")
    if report.ok:
        print("OK: every check passed")
    else:
        manifest_level = sum(f.row is None for f in report.failures)
        print(f"FAIL: {len(report.failures)} failures ({report.failed_rows} rows failed"
              + (f", {manifest_level} whole-manifest failures)" if manifest_level else ")"))
    if args.drop_invalid:
        print(f"dropped {len(report.dropped)} rows; cleaned manifests: "
              + (", ".join(report.clean_manifests.values()) or "none"))
        for split, why in report.not_cleaned.items():
            print(f"  no cleaned manifest for {split}: {why}")
    print(f"report: {report.report_paths['markdown']} (JSON: {report.report_paths['json']})")
    return 0 if report.ok else 1
