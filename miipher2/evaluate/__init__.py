"""Objective evaluation: metrics, baselines, reports.

    result = evaluate_model("runs/model", "data", split="test", out_dir="evaluation")
    result.table          # one row per (utterance, system): clean, degraded, miipher2, deepfilternet3
    result.aggregates     # means with 95% bootstrap CIs, overall / per language / per degradation type
    result.headline       # {metric: mean} of the model
    result.html_path      # self-contained report (also report.md for KFP)
"""

from miipher2.evaluate.report import write_report
from miipher2.evaluate.run import EvaluationResult, evaluate_model, evaluate_systems

__all__ = ["EvaluationResult", "evaluate_model", "evaluate_systems", "write_report"]
