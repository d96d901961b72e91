"""The promotion gate: `challenger` becomes `champion` only when the numbers say it is better.

Both versions restore the same evaluation set; for each configured metric a paired bootstrap on
the per-utterance differences gives a 95% interval of the change (oriented: positive = better).
A rule passes when the interval's lower end is above `-margin` — we are confident the metric did
not get worse by more than the margin (a non-inferiority test). The challenger wins when every
comparable rule passes and at least one metric improved significantly (lower end above zero).
The very first version has nothing to beat; it must clear absolute floors instead.
Every decision is written to the challenger's version tags, so the registry explains itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from miipher2.evaluate.aggregate import paired_bootstrap
from miipher2.evaluate.metrics import METRICS
from miipher2.registry.pyfunc import RegistryError
from miipher2.registry.versions import CHALLENGER, CHAMPION, client, version_by_alias

DECISION_TAG, REASON_TAG, TIMESTAMP_TAG = "promotion.decision", "promotion.reason", "promotion.timestamp"
AGAINST_TAG, SUMMARY_TAG = "promotion.against", "promotion.summary"
_TAG_LIMIT = 4000  # MLflow caps tag values at a few thousand characters


@dataclass(frozen=True)
class GateRule:
    """`metric` must not get worse by more than `margin` (in the metric's own units)."""

    metric: str
    margin: float = 0.0

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; choose from {sorted(METRICS)}")
        if not self.margin >= 0:
            raise ValueError(f"margin of {self.metric} must be >= 0, got {self.margin}")

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better


DEFAULT_RULES = (GateRule("dnsmos_ovrl", 0.05), GateRule("wer", 0.02), GateRule("speaker_similarity", 0.02))
# Absolute bars for the first champion: a minimum for higher-is-better metrics, a maximum otherwise.
DEFAULT_FLOORS = {"dnsmos_ovrl": 2.5, "speaker_similarity": 0.5, "wer": 0.5}


@dataclass
class Decision:
    promote: bool
    reason: str
    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    challenger_version: str | None = None
    champion_version: str | None = None
    no_op: bool = False  # nothing to decide: the challenger already is the champion

    @property
    def label(self) -> str:
        return "no-op" if self.no_op else "promoted" if self.promote else "rejected"

    def render(self) -> str:
        """The human-readable verdict CI prints."""
        lines = [f"{self.label.upper()}: {self.reason}"]
        if not self.table.empty:
            lines += ["", self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        return "\n".join(lines)


# ---- the decision itself: pure functions of per-utterance tables ------------------------------


def compare(challenger: pd.DataFrame, champion: pd.DataFrame, rules: Iterable[GateRule] = DEFAULT_RULES, *,
            require_improvement: bool = True, seed: int = 0) -> Decision:
    """Paired comparison of two per-utterance tables (column `utt_id` + one column per metric)."""
    rules = list(rules)
    if not rules:
        raise ValueError("the gate needs at least one rule")
    paired = challenger.merge(champion, on="utt_id", suffixes=("_challenger", "_champion"))
    if paired.empty:
        raise ValueError("challenger and champion were evaluated on no common utterances")
    rows = []
    for rule in rules:
        for side, table in (("challenger", challenger), ("champion", champion)):
            if rule.metric not in table:
                raise ValueError(f"the {side} evaluation has no {rule.metric!r} column")
        ours, theirs = paired[f"{rule.metric}_challenger"], paired[f"{rule.metric}_champion"]
        n, mean, low, high = paired_bootstrap(ours, theirs, higher_is_better=rule.higher_is_better, seed=seed)
        verdict = ("n/a" if n == 0 else "worse" if low < -rule.margin else "better" if low > 0 else "not worse")
        both = ours.notna() & theirs.notna()
        rows.append({"metric": rule.metric, "n": n, "challenger": ours[both].mean(), "champion": theirs[both].mean(),
                     "gain": mean, "gain_ci_low": low, "gain_ci_high": high, "margin": rule.margin,
                     "verdict": verdict})
    table = pd.DataFrame(rows)
    verdicts = table["verdict"]
    if (verdicts == "n/a").all():
        return Decision(False, "no rule could be evaluated (every metric missing on one side)", table)
    worse = table[verdicts == "worse"]
    if not worse.empty:
        reasons = [f"{r.metric} may have dropped by more than {r.margin:g} "
                   f"(95% CI of gain [{r.gain_ci_low:.3g}, {r.gain_ci_high:.3g}])" for r in worse.itertuples()]
        return Decision(False, "; ".join(reasons), table)
    better = table[verdicts == "better"]
    if require_improvement and better.empty:
        return Decision(False, "no metric improved significantly (every 95% CI of the gain includes 0)", table)
    improved = ", ".join(f"{r.metric} +{r.gain:.3g}" for r in better.itertuples()) or "no significant change"
    return Decision(True, f"better on {improved}; no metric worse beyond its margin", table)


def check_floors(table: pd.DataFrame, floors: Mapping[str, float]) -> Decision:
    """Mean of each floored metric against its absolute bar (used for the very first champion)."""
    if not floors:
        raise ValueError("the first champion needs at least one floor")
    rows = []
    for metric, floor in floors.items():
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} in floors; choose from {sorted(METRICS)}")
        values = table[metric].dropna() if metric in table else pd.Series(dtype=float)
        mean = float(values.mean()) if len(values) else math.nan
        higher = METRICS[metric].higher_is_better
        ok = (mean >= floor) if higher else (mean <= floor)
        rows.append({"metric": metric, "n": len(values), "mean": mean, "floor": floor,
                     "needs": ">=" if higher else "<=", "verdict": "n/a" if not len(values) else "pass" if ok else "fail"})
    result = pd.DataFrame(rows)
    if (result["verdict"] == "n/a").all():
        return Decision(False, "no floored metric could be measured", result)
    failed = result[result["verdict"] == "fail"]
    if not failed.empty:
        return Decision(False, "first version misses the floors: " + "; ".join(
            f"{r.metric} {r.mean:.3g} (needs {r.needs} {r.floor:g})" for r in failed.itertuples()), result)
    return Decision(True, "first version clears every absolute floor", result)


# ---- the gate against the registry ------------------------------------------------------------

Evaluator = Callable[[Mapping[str, str]], pd.DataFrame]


def promote(model_name: str, data_root: str | Path, *, split: str = "test", rules: Iterable[GateRule] = DEFAULT_RULES,
            floors: Mapping[str, float] = DEFAULT_FLOORS, max_utterances: int | None = None,
            out_dir: str | Path = "promotion", workers: int = 1, asr: str | None = None,
            tracking_uri: str | None = None, require_improvement: bool = True,
            evaluate: Evaluator | None = None) -> Decision:
    """Evaluate `challenger` (and `champion`) of `model_name`; move `champion` when the challenger wins.

    `evaluate` maps {system name: model URI} to a per-utterance table with a `system` column; by
    default both models restore the evaluation set at `data_root` and are scored by
    `miipher2.evaluate`. Idempotent: when the challenger already is the champion, nothing happens.
    """
    rules = list(rules)
    mlflow_client = client(tracking_uri)
    challenger = version_by_alias(mlflow_client, model_name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{model_name!r} has no version with alias {CHALLENGER!r}; register one with "
                            f"`miipher2 register`")
    champion = version_by_alias(mlflow_client, model_name, CHAMPION)
    if champion is not None and str(champion.version) == str(challenger.version):
        return Decision(False, f"version {challenger.version} already is {model_name}@{CHAMPION}; nothing to do",
                        challenger_version=str(challenger.version), champion_version=str(champion.version), no_op=True)

    systems = {CHALLENGER: f"models:/{model_name}/{challenger.version}"}
    if champion is not None:
        systems[CHAMPION] = f"models:/{model_name}/{champion.version}"
    metrics = [r.metric for r in rules] if champion is not None else list(floors)
    if evaluate is None:
        evaluate = _registry_evaluator(data_root, split, out_dir, max_utterances, workers, metrics, asr)
    table = evaluate(systems)
    per_system = {name: table[table["system"] == name] for name in systems}
    if champion is None:
        decision = check_floors(per_system[CHALLENGER], floors)
    else:
        decision = compare(per_system[CHALLENGER], per_system[CHAMPION], rules, require_improvement=require_improvement)
    decision.challenger_version = str(challenger.version)
    decision.champion_version = str(champion.version) if champion is not None else None

    _record(mlflow_client, model_name, decision)
    if decision.promote:
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, challenger.version)
        if champion is not None:
            mlflow_client.set_model_version_tag(model_name, champion.version, "promotion.superseded_by",
                                                challenger.version)
    return decision


def _record(mlflow_client, model_name: str, decision: Decision) -> None:
    tags = {
        DECISION_TAG: decision.label,
        REASON_TAG: decision.reason[:_TAG_LIMIT],
        TIMESTAMP_TAG: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        AGAINST_TAG: f"version {decision.champion_version}" if decision.champion_version else "absolute floors",
        SUMMARY_TAG: decision.render()[:_TAG_LIMIT],
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model_name, decision.challenger_version, key, value)


def _registry_evaluator(data_root, split, out_dir, max_utterances, workers, metrics, asr) -> Evaluator:
    """Restore the evaluation set with each registered model and score only the gated metrics."""
    from miipher2.evaluate.asr import DEFAULT_ASR
    from miipher2.evaluate.baseline import RestorerEnhancer
    from miipher2.evaluate.run import ScoringConfig, evaluate_systems, groups_for
    from miipher2.registry.pyfunc import load_registered_restorer

    def evaluate(systems: Mapping[str, str]) -> pd.DataFrame:
        enhancers = [RestorerEnhancer(load_registered_restorer(uri), name=name) for name, uri in systems.items()]
        config = ScoringConfig(groups_for(metrics), asr or DEFAULT_ASR)
        result = evaluate_systems(enhancers, data_root, split, out_dir, max_utterances=max_utterances,
                                  config=config, workers=workers, main_system=CHALLENGER, reference_rows=False)
        return result.table

    return evaluate
