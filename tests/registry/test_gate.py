"""The promotion decision as a pure function of per-utterance metric tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from miipher2.registry.promotion import GateRule, check_floors, compare

RULES = [GateRule("dnsmos_ovrl", 0.05), GateRule("wer", 0.02), GateRule("speaker_similarity", 0.02)]


def tables(ovrl_gain=0.0, wer_gain=0.0, sim_gain=0.0, n=40, seed=0):
    rng = np.random.default_rng(seed)
    champion = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "dnsmos_ovrl": rng.normal(3.0, 0.3, n),
                             "wer": rng.uniform(0.05, 0.3, n), "speaker_similarity": rng.normal(0.8, 0.05, n)})
    noise = lambda scale: rng.normal(0, scale, n)  # noqa: E731 — per-utterance jitter of the challenger
    challenger = champion.assign(dnsmos_ovrl=champion["dnsmos_ovrl"] + ovrl_gain + noise(0.02),
                                 wer=champion["wer"] - wer_gain + noise(0.005),
                                 speaker_similarity=champion["speaker_similarity"] + sim_gain + noise(0.005))
    return challenger, champion


def test_a_better_challenger_is_promoted_and_the_reason_says_why():
    decision = compare(*tables(ovrl_gain=0.3, wer_gain=0.05), RULES)
    assert decision.promote
    assert "dnsmos_ovrl" in decision.reason and "wer" in decision.reason
    verdicts = decision.table.set_index("metric")["verdict"]
    assert verdicts["dnsmos_ovrl"] == "better" and verdicts["speaker_similarity"] == "not worse"
    assert "PROMOTED" in decision.render() and "gain_ci_low" in decision.render()


def test_a_worse_challenger_is_refused_even_if_better_elsewhere():
    decision = compare(*tables(ovrl_gain=0.3, wer_gain=-0.1), RULES)
    assert not decision.promote
    assert decision.reason.startswith("wer may have dropped by more than 0.02")
    assert decision.table.set_index("metric").at["wer", "verdict"] == "worse"
    assert "REJECTED" in decision.render()


def test_a_drop_within_the_margin_is_tolerated():
    decision = compare(*tables(ovrl_gain=-0.01, wer_gain=0.05), RULES)
    assert decision.promote, decision.render()


def test_no_improvement_means_no_promotion_unless_allowed():
    challenger, champion = tables()
    assert not compare(challenger, champion, RULES).promote
    assert "no metric improved significantly" in compare(challenger, champion, RULES).reason
    assert compare(challenger, champion, RULES, require_improvement=False).promote


def test_missing_values_are_dropped_pairwise_and_all_missing_is_not_a_pass():
    challenger, champion = tables(ovrl_gain=0.3)
    challenger["wer"] = np.nan  # e.g. a non-English evaluation set
    decision = compare(challenger, champion, RULES)
    assert decision.promote and decision.table.set_index("metric").at["wer", "verdict"] == "n/a"
    only_wer = compare(challenger, champion, [GateRule("wer", 0.02)])
    assert not only_wer.promote and "no rule could be evaluated" in only_wer.reason


def test_bad_rules_and_tables_are_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        GateRule("loudness")
    with pytest.raises(ValueError, match="margin"):
        GateRule("wer", -0.1)
    challenger, champion = tables()
    with pytest.raises(ValueError, match="no common utterances"):
        compare(challenger.assign(utt_id="other"), champion, RULES)
    with pytest.raises(ValueError, match="has no 'pesq' column"):
        compare(challenger, champion, [GateRule("pesq")])


def test_floors_for_the_first_champion():
    challenger, _ = tables()
    assert check_floors(challenger, {"dnsmos_ovrl": 2.5, "wer": 0.5}).promote
    refused = check_floors(challenger, {"dnsmos_ovrl": 3.5, "wer": 0.1})
    assert not refused.promote
    assert "dnsmos_ovrl" in refused.reason and "needs >= 3.5" in refused.reason and "needs <= 0.1" in refused.reason
    with pytest.raises(ValueError, match="unknown metric"):
        check_floors(challenger, {"loudness": 1.0})
