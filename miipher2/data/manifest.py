"""Manifests: one CSV per split listing utterances, paths relative to the dataset root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from miipher2.files import atomic_file

COLUMNS = ("utt_id", "path", "duration_s", "sample_rate", "channels", "language", "speaker", "split", "transcript")
SPLITS = ("train", "val", "test")
MANIFEST_DIR = "manifests"


def manifest_path(root: str | Path, split: str) -> Path:
    return Path(root) / MANIFEST_DIR / f"{split}.csv"


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest with every column as written (ids and transcripts stay strings)."""
    frame = pd.read_csv(path, dtype={"utt_id": str, "path": str, "language": str, "speaker": str,
                                     "split": str, "transcript": str}, keep_default_na=False)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    """Write atomically (temp file + rename) so readers never see a half-written manifest."""
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
