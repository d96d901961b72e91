"""The validation report: every failure found, as JSON for machines and Markdown for people.

A failure belongs to one manifest row (`row` is its 0-based position in the split's CSV) or,
when `row` is None, to a whole manifest (missing file, missing column). Dropped rows are listed
by name so that `--drop-invalid` never makes data disappear silently.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from miipher2.files import atomic_write_text

# Every check the validator runs, with the sentence a person reads in the report.
CHECKS: dict[str, str] = {
    "missing_manifest": "the split's manifest CSV does not exist",
    "unreadable_manifest": "the manifest cannot be read (permissions, I/O error) or is not a valid CSV",
    "missing_column": "a required manifest column is absent",
    "schema": "a manifest value has the wrong type or an invalid value (pandera)",
    "split_mismatch": "the row's split column differs from the manifest it is listed in",
    "duplicate_utt_id": "the utt_id is already used by an earlier row (any split)",
    "duplicate_path": "the audio file is already listed by an earlier row (any split)",
    "speaker_in_multiple_splits": "the speaker also appears in an earlier split (splits must be speaker-disjoint)",
    "unsafe_path": "the path is absolute, contains '..' or escapes the dataset root",
    "missing_file": "the audio file does not exist or is not a regular file",
    "unreadable_file": "the audio file cannot be read (permissions, I/O error)",
    "decode": "the file cannot be decoded as audio",
    "format_mismatch": "the file's content is not the format its extension claims",
    "truncated": "the WAV header declares more sample data than the file holds",
    "subtype": "the sample encoding is not an accepted one (e.g. 8-bit)",
    "empty_audio": "the file holds zero samples",
    "sample_rate": "the sample rate is not the expected one",
    "channels": "the channel count is not the expected one",
    "duration": "the duration is outside the accepted bounds",
    "metadata_mismatch": "the manifest's duration_s / sample_rate / channels disagree with the file",
    "non_finite": "the audio contains NaN or Inf samples",
    "silent": "the audio is silent (peak below the silence threshold)",
    "clipping": "too many samples sit at full scale",
}


@dataclass(frozen=True)
class Failure:
    """One failed check. `row` is None for failures of a whole manifest."""

    split: str
    check: str
    message: str
    row: int | None = None
    utt_id: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class DroppedRow:
    split: str
    row: int
    utt_id: str | None
    path: str | None
    checks: tuple[str, ...]


@dataclass
class ValidationReport:
    root: str
    splits: tuple[str, ...]
    config: dict[str, Any]
    rows: dict[str, int]  # rows read per split
    failures: list[Failure]
    dropped: list[DroppedRow] = field(default_factory=list)
    clean_manifests: dict[str, str] = field(default_factory=dict)
    not_cleaned: dict[str, str] = field(default_factory=dict)  # split -> why no cleaned manifest
    report_paths: dict[str, str] = field(default_factory=dict)  # "json"/"markdown" -> path
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def rows_checked(self) -> int:
        return sum(self.rows.values())

    @property
    def counts(self) -> dict[str, int]:
        """Failures per check, every check listed (zero included) so consumers can rely on the keys."""
        counted = Counter(f.check for f in self.failures)
        return {name: counted.get(name, 0) for name in CHECKS}

    @property
    def failed_rows(self) -> int:
        return len({(f.split, f.row) for f in self.failures if f.row is not None})

    def to_dict(self) -> dict[str, Any]:
        # Elapsed time stays out: the report must be byte-identical when the data is unchanged.
        return {
            "ok": self.ok,
            "root": self.root,
            "splits": list(self.splits),
            "config": self.config,
            "rows": self.rows,
            "rows_checked": self.rows_checked,
            "failed_rows": self.failed_rows,
            "counts": self.counts,
            "failures": [asdict(f) for f in self.failures],
            "dropped": [asdict(d) | {"checks": list(d.checks)} for d in self.dropped],
            "clean_manifests": self.clean_manifests,
            "not_cleaned": self.not_cleaned,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_markdown(self) -> str:
        return render_markdown(self)

    def write(self, report_dir: str | os.PathLike) -> dict[str, str]:
        """Write validation.json and validation.md atomically; remember and return their paths."""
        report_dir = Path(report_dir)
        paths = {"json": report_dir / "validation.json", "markdown": report_dir / "validation.md"}
        atomic_write_text(paths["json"], self.to_json())
        atomic_write_text(paths["markdown"], self.to_markdown())
        self.report_paths = {kind: str(path) for kind, path in paths.items()}
        return self.report_paths


def render_markdown(report: ValidationReport) -> str:
    status = "OK" if report.ok else "FAIL"
    per_split = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    manifest_level = sum(f.row is None for f in report.failures)
    lines = [
        f"# Dataset validation: {status}",
        "",
        f"- Dataset: `{report.root}`",
        f"- Rows checked: {report.rows_checked} ({per_split or 'no manifests read'})",
        f"- Failures: {len(report.failures)}: {len(report.failures) - manifest_level} in {report.failed_rows} rows, "
        f"{manifest_level} of whole manifests",
        "",
        "## Failures per check",
        "",
        "| check | failures | meaning |",
        "|---|---:|---|",
    ]
    lines += [f"| {name} | {count} | {CHECKS[name]} |" for name, count in report.counts.items()]
    if report.failures:
        lines += ["", "## Failing rows", "", "| split | row | utt_id | path | check | message |", "|---|---:|---|---|---|---|"]
        lines += [
            "| " + " | ".join(_cell(v) for v in (f.split, f.row, f.utt_id, f.path, f.check, f.message)) + " |"
            for f in report.failures
        ]
    if report.dropped or report.clean_manifests or report.not_cleaned:
        lines += ["", "## Dropped rows (--drop-invalid)", ""]
        lines += [f"- cleaned manifest for {split}: `{path}`" for split, path in report.clean_manifests.items()]
        lines += [f"- no cleaned manifest for {split}: {why}" for split, why in report.not_cleaned.items()]
        if report.dropped:
            lines += ["", "| split | row | utt_id | path | failed checks |", "|---|---:|---|---|---|"]
            lines += [
                "| " + " | ".join(_cell(v) for v in (d.split, d.row, d.utt_id, d.path, ", ".join(d.checks))) + " |"
                for d in report.dropped
            ]
        else:
            lines += ["", "No rows were dropped."]
    lines += ["", "## Settings", "", "```json", json.dumps(report.config, indent=2), "```", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes and newlines from user data must not break the table."""
    if value is None:
        return ""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
