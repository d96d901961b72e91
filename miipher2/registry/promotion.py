"""The promotion gate: `challenger` becomes `champion` only when the numbers say it is better.

Both versions restore the same evaluation set; for each configured metric a paired bootstrap on
the per-utterance differences gives a 95% interval of the change (oriented: positive = better).
A rule passes when the interval's lower end is above `-margin` — we are confident the metric did
not get worse by more than the margin (a non-inferiority test). The challenger wins when every
comparable rule passes and at least one metric improved significantly (lower end above zero).
The very first version has nothing to beat; it must clear absolute floors instead.

Against the registry, the gate is safe to run twice at once: just before moving `champion` it
reads the alias again and refuses if another gate moved it meanwhile (the later gate must not
silently overwrite a decision it never saw). The alias moves first and the decision is recorded
on the challenger's version tags after, so a tag never claims a promotion that did not happen.
Every decision is also a Markdown report (`Decision.markdown`) that CI prints and attaches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from miipher2.evaluate.aggregate import paired_bootstrap
from miipher2.evaluate.metrics import METRICS
from miipher2.files import atomic_write_text
from miipher2.registry.pyfunc import RegistryError
from miipher2.registry.versions import CHALLENGER, CHAMPION, client, version_by_alias

DECISION_TAG, REASON_TAG, TIMESTAMP_TAG = "promotion.decision", "promotion.reason", "promotion.timestamp"
AGAINST_TAG, SUMMARY_TAG = "promotion.against", "promotion.summary"
REPORT_MARKDOWN, REPORT_JSON = "promotion.md", "promotion.json"
_TAG_LIMIT = 4000  # MLflow caps tag values at a few thousand characters
_RECORD_ATTEMPTS = 3


class PromotionRecordError(RuntimeError):
    """The alias moved but the decision could not be written to the version's tags."""


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
    model_name: str = ""
    decided_at: str = ""  # UTC, ISO 8601

    @property
    def label(self) -> str:
        return "no-op" if self.no_op else "promoted" if self.promote else "rejected"

    def render(self) -> str:
        """The plain-text verdict (also stored in the version's `promotion.summary` tag)."""
        lines = [f"{self.label.upper()}: {self.reason}"]
        if not self.table.empty:
            lines += ["", self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The gate's report for CI: verdict, versions, reason, and one table row per rule or floor."""
        name = self.model_name or "model"
        against = f"version {self.champion_version} (`{CHAMPION}`)" if self.champion_version else "absolute floors"
        lines = [f"## Promotion gate for `{name}`: {self.label.upper()}", "",
                 f"- challenger: version {self.challenger_version or '?'} (`{CHALLENGER}`)",
                 f"- against: {against}",
                 f"- decided: {self.decided_at or 'n/a'}",
                 f"- reason: {self.reason}", ""]
        if not self.table.empty:
            lines += _markdown_table(self.table) + [""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        table = self.table.astype(object).where(self.table.notna(), None)  # JSON has no NaN
        return {"model": self.model_name, "decision": self.label, "promote": self.promote, "reason": self.reason,
                "challenger_version": self.challenger_version, "champion_version": self.champion_version,
                "decided_at": self.decided_at, "rules": table.to_dict("records")}


def write_report(decision: Decision, out_dir: str | Path) -> Path:
    """`promotion.md` (the Markdown report) and `promotion.json` in `out_dir`; returns the Markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / REPORT_JSON, json.dumps(decision.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / REPORT_MARKDOWN, decision.markdown())
    return out_dir / REPORT_MARKDOWN


def _markdown_table(table: pd.DataFrame) -> list[str]:
    if "gain" in table:  # challenger against champion
        header = ["metric", "n", "challenger", "champion", "gain", "95% CI of gain", "margin", "verdict"]
        rows = [[r.metric, r.n, _num(r.challenger), _num(r.champion), _num(r.gain),
                 f"[{_num(r.gain_ci_low)}, {_num(r.gain_ci_high)}]", _num(r.margin), f"**{r.verdict}**"]
                for r in table.itertuples()]
    else:  # first version against the floors
        header = ["metric", "n", "mean", "needs", "verdict"]
        rows = [[r.metric, r.n, _num(r.mean), f"{r.needs} {_num(r.floor)}", f"**{r.verdict}**"]
                for r in table.itertuples()]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _num(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


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
    The report lands in `out_dir` (`write_report`). Raises `PromotionRecordError` when the alias
    moved but its record could not be written.
    """
    rules = list(rules)
    mlflow_client = client(tracking_uri)
    challenger = version_by_alias(mlflow_client, model_name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{model_name!r} has no version with alias {CHALLENGER!r}; register one with "
                            f"`miipher2 register`")
    champion = version_by_alias(mlflow_client, model_name, CHAMPION)  # what this evaluation is against
    if champion is not None and str(champion.version) == str(challenger.version):
        decision = Decision(False, f"version {challenger.version} already is {model_name}@{CHAMPION}; nothing to do",
                            challenger_version=str(challenger.version), champion_version=str(champion.version),
                            no_op=True, model_name=model_name, decided_at=_now())
        write_report(decision, out_dir)
        return decision

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
    decision.model_name = model_name
    decision.challenger_version = str(challenger.version)
    decision.champion_version = str(champion.version) if champion is not None else None

    if decision.promote:
        # Re-read the alias right before moving it: another gate may have moved it while this one
        # evaluated. (MLflow has no compare-and-set; this narrows the window to two requests.)
        now = version_by_alias(mlflow_client, model_name, CHAMPION)
        if _version(now) != _version(champion):
            decision.promote = False
            decision.reason = (f"{model_name}@{CHAMPION} moved from {_describe(champion)} to {_describe(now)} while "
                               f"this gate was evaluating; not overwriting it (the evaluation was against "
                               f"{_describe(champion)}). Run the gate again to compare with the new champion.")
        else:
            mlflow_client.set_registered_model_alias(model_name, CHAMPION, challenger.version)
    decision.decided_at = _now()
    _record(mlflow_client, model_name, decision, champion)
    write_report(decision, out_dir)
    return decision


def _record(mlflow_client, model_name: str, decision: Decision, replaced) -> None:
    """The decision on the challenger's tags (and `superseded_by` on a replaced champion), after the fact."""
    tags = {
        DECISION_TAG: decision.label,
        REASON_TAG: decision.reason[:_TAG_LIMIT],
        TIMESTAMP_TAG: decision.decided_at,
        AGAINST_TAG: f"version {decision.champion_version}" if decision.champion_version else "absolute floors",
        SUMMARY_TAG: decision.render()[:_TAG_LIMIT],
    }
    writes = [(decision.challenger_version, key, value) for key, value in tags.items()]
    if decision.promote and replaced is not None:
        writes.append((str(replaced.version), "promotion.superseded_by", decision.challenger_version))
    for attempt in range(1, _RECORD_ATTEMPTS + 1):
        try:
            for version, key, value in writes:
                mlflow_client.set_model_version_tag(model_name, version, key, value)
            return
        except Exception as err:  # noqa: BLE001 — any failure: retry, then say exactly what state we left
            if attempt == _RECORD_ATTEMPTS:
                moved = (f"{model_name}@{CHAMPION} now points to version {decision.challenger_version}"
                         if decision.promote else f"{model_name}@{CHAMPION} was not moved")
                raise PromotionRecordError(f"the gate decided '{decision.label}' and {moved}, but writing the "
                                           f"decision to the version's tags failed: {err}") from err
            time.sleep(attempt)


def _version(model_version) -> str | None:
    return None if model_version is None else str(model_version.version)


def _describe(model_version) -> str:
    return "no version" if model_version is None else f"version {model_version.version}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
