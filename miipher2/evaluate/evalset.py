"""The fixed evaluation set: `manifests/{split}_degraded.csv` pairs degraded and clean audio.

Columns: the manifest COLUMNS (`path` is the degraded copy) + `clean_path` + `degradation`, a
JSON list of the effects applied, e.g. `[{"type": "noise", "snr_db": 7.5}, {"type": "mp3", ...}]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from miipher2.data.manifest import COLUMNS, MANIFEST_DIR, read_manifest
from miipher2.data.paths import resolve_inside

REQUIRED = ("utt_id", "path", "clean_path", "language", "transcript", "degradation")
_EFFECT_NAME_KEYS = ("type", "name", "effect", "kind")


class EvaluationSetError(ValueError):
    """An evaluation manifest that cannot be used; the message names the file and the row."""


def degraded_manifest_path(root: str | Path, split: str) -> Path:
    return Path(root) / MANIFEST_DIR / f"{split}_degraded.csv"


def degradation_types(degradation: str) -> list[str]:
    """Effect names of a degradation JSON list, in order; `["none"]` for an untouched copy."""
    effects = json.loads(degradation) if degradation.strip() else []
    if not isinstance(effects, list):
        raise ValueError(f"degradation must be a JSON list of effects, got {type(effects).__name__}")
    names = []
    for effect in effects:
        if isinstance(effect, str):
            names.append(effect)
        elif isinstance(effect, dict) and any(k in effect for k in _EFFECT_NAME_KEYS):
            names.append(str(next(effect[k] for k in _EFFECT_NAME_KEYS if k in effect)))
        else:
            raise ValueError(f"cannot name the degradation effect {effect!r}")
    return list(dict.fromkeys(names)) or ["none"]


def load_evaluation_set(root: str | Path, split: str = "test", max_utterances: int | None = None) -> pd.DataFrame:
    """Rows of the degraded manifest with absolute `degraded_file`/`clean_file` and `degradation_types`.

    Paths are resolved inside the dataset root (never outside it). With `max_utterances`, the
    subset takes utterances round-robin across languages so a small run still covers them all.
    """
    root = Path(root)
    path = degraded_manifest_path(root, split)
    if not path.is_file():
        raise EvaluationSetError(f"{path}: no degraded manifest for split {split!r}; materialise the degraded "
                                 f"evaluation copies first")
    frame = read_manifest(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise EvaluationSetError(f"{path}: missing columns {missing} (expected {list(COLUMNS)} + clean_path, degradation)")
    if frame.empty:
        raise EvaluationSetError(f"{path}: no utterances")
    if frame["utt_id"].duplicated().any():
        raise EvaluationSetError(f"{path}: duplicate utt_id {frame.loc[frame['utt_id'].duplicated(), 'utt_id'].iloc[0]!r}")
    if max_utterances is not None:
        frame = _round_robin_by_language(frame, max_utterances)
    rows = []
    for index, row in frame.iterrows():
        where = f"{path} row {index + 2} ({row['utt_id']})"  # +2: header line, 1-based
        try:
            rows.append({**row.to_dict(),
                         "degraded_file": str(resolve_inside(root, row["path"])),
                         "clean_file": str(resolve_inside(root, row["clean_path"])),
                         "degradation_types": degradation_types(row["degradation"])})
        except ValueError as err:
            raise EvaluationSetError(f"{where}: {err}") from err
    return pd.DataFrame(rows).reset_index(drop=True)


def _round_robin_by_language(frame: pd.DataFrame, limit: int) -> pd.DataFrame:
    if limit < 1:
        raise EvaluationSetError(f"max_utterances must be at least 1, got {limit}")
    order = frame.groupby("language", sort=False).cumcount()
    return frame.assign(_order=order).sort_values(["_order"], kind="stable").head(limit).drop(columns="_order") \
        .sort_index()
