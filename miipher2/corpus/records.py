"""The output folder's layout and its done-records: what makes a restoration resumable.

    OUTDIR/audio/<input path>.wav           restored files (mirroring the input layout)
    OUTDIR/manifests/<manifest name>        the restored-corpus manifest (OUTDIR is its dataset root)
    OUTDIR/summary.json, summary.md         hours in/out, failures, score distribution
    OUTDIR/state/plan.json                  the plan: manifest, pinned model, settings, shards
    OUTDIR/state/shards/00003.csv           the rows of shard 3
    OUTDIR/state/shards/00003.result.json   what shard 3's last run produced (for the merge)
    OUTDIR/state/records/<input path>.json  one done-record per restored file

A file counts as done only when its record matches all three of: the sha256 of the input's
bytes now, the recipe (model identity + settings that change the output), and the sha256 of
the output file now. The record is written (atomically) only after the output file was fully
written (atomically) and scored, so a crash at any point leaves either no record or a record
whose output is complete. Anything else (no record, edited input, other model, truncated or
replaced output) is restored again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from miipher2.files import atomic_write_text

RECORD_FORMAT = "miipher2-restored-file/1"


@dataclass(frozen=True)
class Layout:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).absolute())

    @property
    def audio(self) -> Path:
        return self.root / "audio"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def plan(self) -> Path:
        return self.state / "plan.json"

    def shard_rows(self, shard: int) -> Path:
        return self.state / "shards" / f"{shard:05d}.csv"

    def shard_result(self, shard: int) -> Path:
        return self.state / "shards" / f"{shard:05d}.result.json"

    def manifest(self, name: str) -> Path:
        return self.root / "manifests" / name

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_markdown(self) -> Path:
        return self.root / "summary.md"

    @staticmethod
    def output_key(relative: str) -> PurePosixPath:
        """The input path without its suffix: names the output and the record (a.flac -> a.wav)."""
        return PurePosixPath(relative.replace("\\", "/")).with_suffix("")

    def output(self, relative: str, output_format: str) -> Path:
        return self.audio / f"{self.output_key(relative)}.{output_format}"

    def record(self, relative: str) -> Path:
        return self.state / "records" / f"{self.output_key(relative)}.json"


@dataclass
class FileRecord:
    source: str             # the manifest's path (relative to the input dataset root)
    source_sha256: str
    recipe: str
    output: str             # relative to the output root
    output_sha256: str
    input_seconds: float
    output_seconds: float
    sample_rate: int
    scores: dict[str, float] = field(default_factory=dict)  # dnsmos_* of the restored file
    score_error: str = ""   # why there are no scores (e.g. shorter than DNSMOS accepts)
    format: str = RECORD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recipe_fingerprint(model_identity: str, chunk_seconds: float, overlap_seconds: float, output_format: str) -> str:
    """Everything that changes a restored file's bytes: the weights and the inference settings.

    Batch size is left out on purpose: the encoder masks padding and zeroes padded frames, so a
    file restored beside other files differs only by float rounding, and a throughput setting
    should not invalidate a whole restored corpus.
    """
    facts = {"model": model_identity, "chunk_seconds": float(chunk_seconds),
             "overlap_seconds": float(overlap_seconds), "format": output_format}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def valid_record(layout: Layout, relative: str, source_sha256: str, recipe: str) -> FileRecord | None:
    """The file's record when its input, recipe and output are all unchanged; else None."""
    try:
        data = json.loads(layout.record(relative).read_text())
        record = FileRecord(**data)
    except (OSError, ValueError, TypeError):  # no record, or a foreign/corrupt one: restore again
        return None
    if record.format != RECORD_FORMAT or record.source_sha256 != source_sha256 or record.recipe != recipe:
        return None
    try:
        if sha256_file(layout.root / record.output) != record.output_sha256:
            return None
    except OSError:
        return None
    return record


def write_record(layout: Layout, record: FileRecord) -> None:
    write_json(layout.record(record.source), record.to_dict())


def write_json(path: Path, value: Any) -> None:
    """Atomically: readers see the old file or the new one, never a part."""
    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=False) + "\n")
