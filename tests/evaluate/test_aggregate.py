"""Bootstrap intervals, grouping by language and degradation, and the paired test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from miipher2.evaluate.aggregate import aggregate, aggregate_all, bootstrap_ci, paired_bootstrap


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = rng.normal(3.0, 1.0, 20)
    large = rng.normal(3.0, 1.0, 2000)
    for values in (small, large):
        mean, low, high = bootstrap_ci(values)
        assert low <= mean <= high
        assert mean == pytest.approx(values.mean())
    assert (bootstrap_ci(large)[2] - bootstrap_ci(large)[1]) < (bootstrap_ci(small)[2] - bootstrap_ci(small)[1])
    _, low, high = bootstrap_ci(large)
    assert low < 3.0 < high  # the true mean, at 95% (seeded: deterministic)


def test_bootstrap_ignores_missing_values_and_handles_tiny_samples():
    assert bootstrap_ci([1.0, math.nan, 3.0])[0] == pytest.approx(2.0)
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))
    assert bootstrap_ci([1, 2, 3, 4], seed=7) == bootstrap_ci([1, 2, 3, 4], seed=7)


@pytest.fixture
def table():
    rows = []
    for utt, lang, kinds, base in (("a", "en", ["noise"], 1.0), ("b", "en", ["reverb", "noise"], 2.0),
                                   ("c", "de", ["codec"], 3.0)):
        rows.append({"utt_id": utt, "system": "degraded", "language": lang, "degradation_types": kinds, "pesq": base,
                     "wer": math.nan if lang == "de" else 0.5})
        rows.append({"utt_id": utt, "system": "model", "language": lang, "degradation_types": kinds,
                     "pesq": base + 1, "wer": math.nan if lang == "de" else 0.25})
    return pd.DataFrame(rows)


def test_grouping_by_language(table):
    result = aggregate(table, ["pesq", "wer"], by="language").set_index(["system", "group", "metric"])
    assert result.loc[("degraded", "en", "pesq"), "mean"] == pytest.approx(1.5)
    assert result.loc[("model", "de", "pesq"), "mean"] == pytest.approx(4.0)
    assert result.loc[("model", "de", "wer"), "n"] == 0 and math.isnan(result.loc[("model", "de", "wer"), "mean"])


def test_grouping_by_degradation_counts_an_utterance_in_each_of_its_effects(table):
    result = aggregate(table, ["pesq"], by="degradation").set_index(["system", "group"])
    assert result.loc[("degraded", "noise"), "n"] == 2
    assert result.loc[("degraded", "noise"), "mean"] == pytest.approx(1.5)
    assert result.loc[("degraded", "reverb"), "mean"] == pytest.approx(2.0)
    assert set(result.loc["model"].index) == {"noise", "reverb", "codec"}


def test_aggregate_all_stacks_overall_language_and_degradation(table):
    result = aggregate_all(table, ["pesq"])
    assert set(result["group_by"]) == {"all", "language", "degradation"}
    overall = result[(result["group_by"] == "all") & (result["system"] == "model")].iloc[0]
    assert overall["n"] == 3 and overall["ci_low"] <= overall["mean"] <= overall["ci_high"]


def test_paired_bootstrap_orients_gains_and_drops_unpaired_values():
    champion = np.array([0.30, 0.20, 0.40, math.nan])
    challenger = np.array([0.20, 0.10, 0.30, 0.10])
    n, mean, low, high = paired_bootstrap(challenger, champion, higher_is_better=False)  # WER: lower is better
    assert n == 3 and mean == pytest.approx(0.1) and low > 0
    n, mean, _, _ = paired_bootstrap(challenger, champion, higher_is_better=True)
    assert mean == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0], [1.0, 2.0], higher_is_better=True)


def test_corpus_wer_is_total_errors_over_total_words_beside_the_mean_of_rates():
    # Hand-computed: 2 errors in 4 words (WER 0.5), 0 in 2 (0.0), 1 in 10 (0.1); one utterance in a
    # language the ASR model cannot transcribe (NaN counts) is left out of both.
    rows = [{"utt_id": u, "system": "model", "wer": w, "word_errors": e, "reference_words": n}
            for u, w, e, n in (("a", 0.5, 2, 4), ("b", 0.0, 0, 2), ("c", 0.1, 1, 10),
                               ("d", math.nan, math.nan, math.nan))]
    result = aggregate(pd.DataFrame(rows), ["wer", "wer_corpus"]).set_index("metric")
    assert result.loc["wer", "mean"] == pytest.approx(0.2)  # (0.5 + 0 + 0.1) / 3
    assert result.loc["wer_corpus", "mean"] == pytest.approx(3 / 16)
    assert result.loc["wer_corpus", "n"] == 3
    assert result.loc["wer_corpus", "ci_low"] <= 3 / 16 <= result.loc["wer_corpus", "ci_high"]


def test_ratio_bootstrap_resamples_utterances_whole():
    from miipher2.evaluate.aggregate import ratio_bootstrap_ci

    assert ratio_bootstrap_ci([3], [10]) == (0.3, 0.3, 0.3)
    assert all(math.isnan(v) for v in ratio_bootstrap_ci([], []))
    # Every utterance has the same rate: any resample gives it, so the interval is that point.
    mean, low, high = ratio_bootstrap_ci([1, 2, 3], [10, 20, 30])
    assert mean == low == high == pytest.approx(0.1)
