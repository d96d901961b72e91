"""The manifest schema (pandera) and its failures as report entries.

Manifests are validated as the text written in the CSV (every column read as a string), so a
value such as `duration_s=abc` or `channels=1.5` is reported once, with the value as written,
instead of being coerced or silently truncated. The same model also accepts a typed frame from
`read_manifest`, because the numeric checks parse whatever they are given.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from miipher2.data.manifest import COLUMNS, SPLITS
from miipher2.data.report import Failure

# utt_id names files (degraded/<split>/<utt_id>.wav), so it must be a safe file stem.
UTT_ID_PATTERN = r"^\w[\w.-]*$"


def _numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


class ManifestSchema(pa.DataFrameModel):
    """One row per utterance; extra columns (e.g. clean_path in degraded manifests) are allowed."""

    utt_id: Series[str]
    path: Series[str]
    duration_s: Series[Any]
    sample_rate: Series[Any]
    channels: Series[Any]
    language: Series[str]
    speaker: Series[str]
    split: Series[str]
    transcript: Series[str]

    class Config:
        strict = False
        ordered = False

    @pa.check("utt_id", name="utt_id_is_file_stem",
              error="must be non-empty and use only letters, digits, '_', '.' and '-' (it names files)")
    def _utt_id(cls, series: pd.Series) -> pd.Series:
        return series.astype(str).str.fullmatch(UTT_ID_PATTERN)

    @pa.check("path", "language", "speaker", name="not_blank", error="a value is required")
    def _not_blank(cls, series: pd.Series) -> pd.Series:
        return series.astype(str).str.strip() != ""

    @pa.check("duration_s", name="positive_number", error="must be a number > 0")
    def _positive_number(cls, series: pd.Series) -> pd.Series:
        numbers = _numbers(series)
        return numbers.notna() & (numbers > 0) & (numbers < float("inf"))

    @pa.check("sample_rate", "channels", name="positive_integer", error="must be a whole number > 0")
    def _positive_integer(cls, series: pd.Series) -> pd.Series:
        numbers = _numbers(series)
        return numbers.notna() & (numbers > 0) & (numbers == numbers.round())

    @pa.check("split", name="known_split", error=f"must be one of {', '.join(SPLITS)}")
    def _known_split(cls, series: pd.Series) -> pd.Series:
        return series.isin(SPLITS)


def schema_failures(frame: pd.DataFrame, split: str) -> list[Failure]:
    """Validate lazily and turn every pandera failure case into a readable Failure."""
    try:
        ManifestSchema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        return [_to_failure(case, frame, split) for case in errors.failure_cases.to_dict("records")]
    return []


def _to_failure(case: dict[str, Any], frame: pd.DataFrame, split: str) -> Failure:
    check, column, value, index = case["check"], case["column"], case["failure_case"], case["index"]
    if check == "column_in_dataframe":
        return Failure(split, "missing_column",
                       f"manifest has no {value!r} column (required columns: {', '.join(COLUMNS)})")
    if index is None or pd.isna(index):  # a whole-column failure, e.g. a wrong dtype
        return Failure(split, "schema", f"column {column!r}: {check} failed ({value})")
    row = int(index)
    if value is None or (isinstance(value, float) and pd.isna(value)):
        message = f"{column} is missing"
    elif isinstance(value, str) and not value.strip():
        message = f"{column} is empty: {check}"
    else:
        message = f"{column}={value!r}: {check}"
    return Failure(split, "schema", message, row=row, utt_id=cell_text(frame, row, "utt_id"), path=cell_text(frame, row, "path"))


def cell_text(frame: pd.DataFrame, row: int, column: str) -> str | None:
    """The value at a row position as text, None when the column or value is absent."""
    if column not in frame.columns:
        return None
    value = frame[column].iloc[row]
    return None if pd.isna(value) else str(value)
