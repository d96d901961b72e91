"""Validate a dataset's manifests and audio files, lazily: every failure is collected, none stops the run.

    report = validate_dataset("data", report_dir="data/reports", drop_invalid=True)
    report.ok, report.counts, report.failures, report.clean_manifests

Three layers of checks, all reported in one ValidationReport:
  1. the manifest schema (pandera, `schema.py`): columns, types, values;
  2. rows against each other: duplicate utt_id / path (within and across splits), a speaker in two splits;
  3. each row's audio file (`file_checks.py`), checked in a small thread pool: soundfile's cffi
     calls release the GIL, so threads overlap reads (a win on cold or network storage).

`drop_invalid` writes `manifests/{split}.clean.csv` beside the originals (which are never
touched) holding only the rows that passed every check; the report lists each dropped row.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd

from miipher2.data.file_checks import RowRef, ValidationConfig, check_file
from miipher2.data.manifest import MANIFEST_DIR, SPLITS, manifest_path, write_manifest
from miipher2.data.report import CHECKS, DroppedRow, Failure, ValidationReport
from miipher2.data.schema import cell_text, schema_failures

__all__ = ["ValidationConfig", "ValidationReport", "Failure", "validate_dataset", "clean_manifest_path"]

_CHECK_ORDER = {name: i for i, name in enumerate(CHECKS)}


def clean_manifest_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / MANIFEST_DIR / f"{split}.clean.csv"


def validate_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    config: ValidationConfig | None = None,
    report_dir: str | os.PathLike | None = None,
    drop_invalid: bool = False,
    workers: int | None = None,
) -> ValidationReport:
    """Check every manifest row of `splits` under `root`; write reports to `report_dir` when given."""
    started = time.perf_counter()
    root = Path(root)
    splits = tuple(splits)
    config = config or ValidationConfig()
    workers = workers or min(4, os.cpu_count() or 1)

    failures: list[Failure] = []
    frames: dict[str, pd.DataFrame] = {}
    for split in splits:
        frame, problem = _read_manifest_text(root, split)
        if problem is not None:
            failures.append(problem)
            continue
        frames[split] = frame
        failures += schema_failures(frame, split)
        failures += _split_mismatches(frame, split)
    failures += _cross_row_failures(frames)

    refs = [ref for split, frame in frames.items() for ref in _row_refs(frame, split)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for file_failures in pool.map(lambda ref: check_file(root, ref, config), refs):
            failures += file_failures

    split_rank = {split: i for i, split in enumerate(splits)}
    failures.sort(key=lambda f: (split_rank.get(f.split, len(splits)), -1 if f.row is None else f.row,
                                 _CHECK_ORDER.get(f.check, len(CHECKS))))
    report = ValidationReport(root=str(root), splits=splits, config=config.to_dict(),
                              rows={split: len(frame) for split, frame in frames.items()}, failures=failures)
    if drop_invalid:
        _write_clean_manifests(root, splits, frames, report)
    report.elapsed_s = time.perf_counter() - started
    if report_dir is not None:
        report.write(report_dir)
    return report


def _read_manifest_text(root: Path, split: str) -> tuple[pd.DataFrame | None, Failure | None]:
    """Every column as the text written, so the schema sees (and reports) values exactly as they are."""
    path = manifest_path(root, split)
    try:
        if not path.is_file():
            return None, Failure(split, "missing_manifest", f"no manifest at {path}")
    except OSError as err:  # a folder on the way that we may not enter
        return None, Failure(split, "unreadable_manifest", f"cannot read {path}: {err.strerror or err}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        return None, Failure(split, "unreadable_manifest", f"{path}: {str(err).strip()}")
    except OSError as err:  # permissions (a file only its writer may read), I/O errors
        return None, Failure(split, "unreadable_manifest", f"cannot read {path}: {err.strerror or err}")
    return frame.reset_index(drop=True), None


def _split_mismatches(frame: pd.DataFrame, split: str) -> list[Failure]:
    if "split" not in frame.columns:
        return []
    return [
        Failure(split, "split_mismatch", f"split={value!r} but the row is listed in the {split} manifest",
                row=row, utt_id=cell_text(frame, row, "utt_id"), path=cell_text(frame, row, "path"))
        for row, value in enumerate(frame["split"])
        if value != split and value in SPLITS  # values outside SPLITS are the schema's to report
    ]


def _cross_row_failures(frames: dict[str, pd.DataFrame]) -> list[Failure]:
    """The first occurrence (in split order, then row order) is kept; every later one is a failure."""
    failures: list[Failure] = []
    first_use: dict[str, dict[str, tuple[str, int]]] = {"utt_id": {}, "path": {}}
    speaker_home: dict[str, str] = {}
    for split, frame in frames.items():
        for row in range(len(frame)):
            utt_id, path = cell_text(frame, row, "utt_id"), cell_text(frame, row, "path")

            def fail(check: str, message: str) -> None:
                failures.append(Failure(split, check, message, row=row, utt_id=utt_id, path=path))

            for column, key, check in (("utt_id", utt_id, "duplicate_utt_id"), ("path", _path_key(path), "duplicate_path")):
                if not key:
                    continue
                if key in first_use[column]:
                    other_split, other_row = first_use[column][key]
                    fail(check, f"{column} {key!r} is already used by {other_split} row {other_row}")
                else:
                    first_use[column][key] = (split, row)
            speaker = cell_text(frame, row, "speaker")
            if speaker:
                home = speaker_home.setdefault(speaker, split)
                if home != split:
                    fail("speaker_in_multiple_splits", f"speaker {speaker!r} is also in {home}: splits must be speaker-disjoint")
    return failures


def _row_refs(frame: pd.DataFrame, split: str) -> Iterable[RowRef]:
    duration = _numeric(frame, "duration_s", positive_float=True)
    rate = _numeric(frame, "sample_rate")
    channels = _numeric(frame, "channels")
    for row in range(len(frame)):
        yield RowRef(split, row, cell_text(frame, row, "utt_id"), cell_text(frame, row, "path") or None,
                     duration[row], rate[row], channels[row])


def _numeric(frame: pd.DataFrame, column: str, positive_float: bool = False) -> list:
    """Parsed values, None where the schema already reported the value as invalid."""
    if column not in frame.columns:
        return [None] * len(frame)
    numbers = pd.to_numeric(frame[column], errors="coerce")
    valid = numbers.notna() & (numbers > 0) & (numbers < float("inf"))
    if not positive_float:
        valid &= numbers == numbers.round()
    return [(float(n) if positive_float else int(n)) if ok else None for n, ok in zip(numbers, valid)]


def _write_clean_manifests(root: Path, splits: tuple[str, ...], frames: dict[str, pd.DataFrame],
                           report: ValidationReport) -> None:
    broken = {f.split: f"{f.check}: {f.message}" for f in reversed(report.failures) if f.row is None}
    for split in splits:
        target = clean_manifest_path(root, split)
        if split in broken or split not in frames:
            # Dropping rows cannot repair a manifest-level fault; a stale cleaned copy would mislead.
            removed = target.exists()
            target.unlink(missing_ok=True)
            report.not_cleaned[split] = broken.get(split, "manifest not read") + (
                f" (removed the stale {target.name})" if removed else "")
            continue
        failed: dict[int, dict[str, None]] = {}  # row -> its failed checks, ordered, once each
        for f in report.failures:
            if f.split == split and f.row is not None:
                failed.setdefault(f.row, {})[f.check] = None
        frame = frames[split]
        for row in sorted(failed):
            report.dropped.append(DroppedRow(split, row, cell_text(frame, row, "utt_id"), cell_text(frame, row, "path"),
                                             tuple(failed[row])))
        write_manifest(frame.drop(index=sorted(failed)), target)
        report.clean_manifests[split] = str(target)


def _path_key(path: str | None) -> str | None:
    return str(PurePosixPath(path.replace("\\", "/"))) if path else None
