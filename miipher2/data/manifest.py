"""Manifests: one CSV per split listing utterances, paths relative to the dataset root."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
