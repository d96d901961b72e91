"""`miipher2 evaluate`: score a model against clean, degraded and baseline rows.

Exit codes: 0 success, 2 unusable input (missing data or model), with a message naming what and where.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2


def register(subparsers) -> None:
    evaluate = subparsers.add_parser("evaluate", help="score a model against clean/degraded/DeepFilterNet3 rows",
                                     description="Restore the degraded evaluation split and write per-utterance "
                                                 "metrics, aggregates with 95%% CIs and an HTML report.")
    evaluate.add_argument("--data", required=True, help="dataset root holding manifests/{split}_degraded.csv")
    evaluate.add_argument("--model", help="model directory or models:/NAME@alias URI (omit: baselines only)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--out", required=True, help="output directory (tables, audio, report.html)")
    evaluate.add_argument("--max-utterances", type=int, help="evaluate a subset, spread across languages")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the DeepFilterNet3 reference row")
    add_asr_and_workers(evaluate)
    evaluate.add_argument("--metrics", default="intrusive,dnsmos,speaker,asr",
                          help="comma-separated metric groups (intrusive, dnsmos, speaker, asr)")
    evaluate.set_defaults(func=_evaluate)


def add_asr_and_workers(parser: argparse.ArgumentParser) -> None:
    from miipher2.evaluate.asr import DEFAULT_ASR

    parser.add_argument("--asr", default=DEFAULT_ASR,
                        help=f"faster-whisper model: local directory or hub id (default {DEFAULT_ASR}, English only)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes that score (and run the baseline); default: the CPUs this process may use")


def _evaluate(args) -> int:
    from miipher2.evaluate.evalset import EvaluationSetError
    from miipher2.evaluate.run import available_cpus, evaluate_model

    try:
        model = args.model
        if model and model.startswith(("models:/", "runs:/")):  # evaluation itself knows no registry
            from miipher2.registry import load_registered_restorer

            model = load_registered_restorer(model)  # its RegistryError is a RuntimeError
        result = evaluate_model(model, args.data, args.split, args.out, max_utterances=args.max_utterances,
                                baseline=not args.no_baseline, asr=args.asr, workers=args.workers or available_cpus(),
                                metric_groups=[g.strip() for g in args.metrics.split(",") if g.strip()])
    except (EvaluationSetError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(result.markdown_path.read_text() if result.markdown_path else "")
    print(f"report: {result.html_path}")
    return 0
