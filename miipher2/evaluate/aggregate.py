"""From the per-utterance table to means with 95% bootstrap confidence intervals.

The per-utterance table has one row per (utterance, system) with a column per metric, plus
`language` and `degradation_types` (a list: an utterance with noise + reverb counts in both
groups). Missing values (NaN: WER of an uncovered language, PESQ of silence) are left out of a
mean and its interval, and `n` says how many values there were. Corpus-level rates (`wer_corpus`:
total errors / total reference words) are ratios of sums, with utterances resampled as a whole.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from miipher2.evaluate.metrics import CORPUS_RATES

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
AGGREGATE_COLUMNS = ("system", "group_by", "group", "metric", "n", "mean", "ci_low", "ci_high")


def bootstrap_ci(values, *, confidence: float = CONFIDENCE, n_boot: int = N_BOOTSTRAP,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean, NaNs ignored."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    # Resample in blocks so memory stays bounded for large evaluation sets.
    means = np.concatenate([rng.choice(values, size=(min(500, n_boot - start), values.size)).mean(axis=1)
                            for start in range(0, n_boot, 500)])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    # The percentile interval of a skewed sample can exclude the sample mean by a rounding hair.
    return mean, float(min(low, mean)), float(max(high, mean))


def ratio_bootstrap_ci(numerators, denominators, *, confidence: float = CONFIDENCE, n_boot: int = N_BOOTSTRAP,
                       seed: int = 0) -> tuple[float, float, float]:
    """(sum(num) / sum(den), low, high): percentile bootstrap over (num, den) pairs; NaN pairs ignored."""
    num, den = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    keep = np.isfinite(num) & np.isfinite(den)
    num, den = num[keep], den[keep]
    if num.size == 0 or den.sum() <= 0:
        return math.nan, math.nan, math.nan
    ratio = float(num.sum() / den.sum())
    if num.size == 1:
        return ratio, ratio, ratio
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, n_boot, 500):
        picks = rng.integers(0, num.size, size=(min(500, n_boot - start), num.size))
        sums = den[picks].sum(axis=1)
        ratios.append(np.where(sums > 0, num[picks].sum(axis=1) / np.where(sums > 0, sums, 1), np.nan))
    ratios = np.concatenate(ratios)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(ratios, [alpha, 1 - alpha])
    return ratio, float(min(low, ratio)), float(max(high, ratio))


def aggregate(table: pd.DataFrame, metrics: list[str], *, by: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Mean and CI of each metric per system, overall (`by=None`) or per value of column `by`.

    `by="degradation"` groups by each entry of the `degradation_types` list column.
    """
    frame = table
    group_column = by
    if by == "degradation":
        frame = table.explode("degradation_types")
        group_column = "degradation_types"
    rows = []
    keys = ["system"] + ([group_column] if group_column else [])
    for key, part in frame.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        group = str(key[1]) if group_column else "all"
        for metric in metrics:
            if metric in CORPUS_RATES:
                errors, units = CORPUS_RATES[metric]
                if errors not in part or units not in part:
                    continue
                num, den = part[errors].to_numpy(dtype=np.float64), part[units].to_numpy(dtype=np.float64)
                mean, low, high = ratio_bootstrap_ci(num, den, seed=seed)
                rows.append((key[0], by or "all", group, metric, int((np.isfinite(num) & np.isfinite(den)).sum()),
                             mean, low, high))
                continue
            if metric not in part:
                continue
            values = part[metric].to_numpy(dtype=np.float64)
            mean, low, high = bootstrap_ci(values, seed=seed)
            rows.append((key[0], by or "all", group, metric, int(np.isfinite(values).sum()), mean, low, high))
    return pd.DataFrame(rows, columns=list(AGGREGATE_COLUMNS))


def aggregate_all(table: pd.DataFrame, metrics: list[str], seed: int = 0) -> pd.DataFrame:
    """Overall, per language and per degradation type, in one long table."""
    parts = [aggregate(table, metrics, seed=seed)]
    if "language" in table:
        parts.append(aggregate(table, metrics, by="language", seed=seed))
    if "degradation_types" in table:
        parts.append(aggregate(table, metrics, by="degradation", seed=seed))
    return pd.concat(parts, ignore_index=True)


def paired_bootstrap(candidate, reference, *, higher_is_better: bool, confidence: float = CONFIDENCE,
                     n_boot: int = N_BOOTSTRAP, seed: int = 0) -> tuple[int, float, float, float]:
    """Improvement of `candidate` over `reference` on the same utterances: (n, mean, low, high).

    Differences are oriented so positive always means "candidate is better"; pairs where either
    side is missing are dropped.
    """
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if candidate.shape != reference.shape:
        raise ValueError(f"paired test needs equal-length inputs, got {candidate.shape} and {reference.shape}")
    diff = candidate - reference if higher_is_better else reference - candidate
    diff = diff[np.isfinite(diff)]
    mean, low, high = bootstrap_ci(diff, confidence=confidence, n_boot=n_boot, seed=seed)
    return int(diff.size), mean, low, high
