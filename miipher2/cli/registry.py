"""`miipher2 register` and `miipher2 promote`: the model registry and the CI gate.

`promote` exit codes (CI branches on them; see PROMOTE_EXIT_CODES):
    0  promoted, or nothing to do (the challenger already is the champion)
    1  internal error: the gate could not decide (tracking server unreachable, a bug); retry or investigate
    2  bad input: no tracking URI, unknown model, no challenger, unloadable version, bad evaluation set or rule
    3  refused: the challenger lost, or the champion moved while the gate evaluated
Messages name what and where. `register` uses 0 and 2 the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from miipher2.cli.evaluate import add_asr_and_workers

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3
PROMOTE_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  promoted, or nothing to do (the challenger already is the champion)
  {EXIT_INTERNAL}  internal error: no decision (e.g. tracking server unreachable); retry or investigate
  {EXIT_BAD_INPUT}  bad input: no tracking URI, unknown model or alias, unloadable version, bad data or rule
  {EXIT_REFUSED}  refused: the challenger lost, or the champion moved during the evaluation

The report (a Markdown table) goes to stdout and to OUT/promotion.md (+ promotion.json) for CI to attach."""


def register(subparsers) -> None:
    reg = subparsers.add_parser("register", help="log a model directory to MLflow as a new version (alias challenger)")
    reg.add_argument("--model-dir", required=True, help="directory written by Restorer.save_pretrained")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument("--dataset-revision", help="dataset version (default: the md5 recorded in ./data.dvc)")
    reg.add_argument("--git-commit", help="code version (default: git HEAD or $GIT_COMMIT)")
    reg.add_argument("--metrics-json", help="headline.json from `miipher2 evaluate` to tag the version with")
    reg.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    reg.set_defaults(func=_register)

    prom = subparsers.add_parser("promote", help="CI gate: move alias champion to the challenger only if it wins",
                                 description="Evaluate NAME@challenger and NAME@champion on the same evaluation set; "
                                             "a paired bootstrap per rule decides.",
                                 epilog=PROMOTE_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    prom.add_argument("--model", required=True, help="registered model name")
    prom.add_argument("--data", default="data", help="dataset root holding manifests/{split}_degraded.csv (default: data)")
    prom.add_argument("--split", default="test")
    prom.add_argument("--rule", "--metrics", dest="rule", action="append", metavar="METRIC:MARGIN[,...]",
                      help="gate rules: the metric must not get worse by more than MARGIN; repeatable or "
                           "comma-separated (default: dnsmos_ovrl:0.05,wer:0.02,speaker_similarity:0.02)")
    prom.add_argument("--floor", action="append", metavar="METRIC:VALUE[,...]",
                      help="absolute bar for the first champion, repeatable "
                           "(default: dnsmos_ovrl:2.5, speaker_similarity:0.5, wer:0.5)")
    prom.add_argument("--max-utterances", type=int)
    prom.add_argument("--out", default="promotion",
                      help="where the evaluation of both versions and the report (promotion.md/.json) are written")
    prom.add_argument("--allow-no-improvement", action="store_true",
                      help="promote a challenger that is merely not worse on every rule")
    prom.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    add_asr_and_workers(prom)
    prom.set_defaults(func=_promote)


def _register(args) -> int:
    from miipher2.registry import RegistryError, register_restorer
    from miipher2.registry.versions import recorded_dataset_revision

    metrics = None
    try:
        if args.metrics_json:
            with open(args.metrics_json) as handle:
                metrics = {k: v for k, v in json.load(handle)["metrics"].items() if v is not None}
        version = register_restorer(args.model_dir, args.name, tracking_uri=args.tracking_uri, metrics=metrics,
                                    dataset_revision=args.dataset_revision or recorded_dataset_revision(),
                                    git_commit=args.git_commit)
    except (RegistryError, OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"registered {args.name} version {version.version} (alias challenger)")
    return 0


def _promote(args) -> int:
    from miipher2.evaluate.evalset import EvaluationSetError
    from miipher2.evaluate.run import available_cpus
    from miipher2.registry import DEFAULT_FLOORS, DEFAULT_RULES, GateRule, RegistryError, promote
    from miipher2.registry.promotion import REPORT_MARKDOWN

    try:
        rules = [GateRule(m, float(v)) for m, v in _pairs(args.rule)] if args.rule else list(DEFAULT_RULES)
        floors = {m: float(v) for m, v in _pairs(args.floor)} if args.floor else dict(DEFAULT_FLOORS)
        decision = promote(args.model, args.data, split=args.split, rules=rules, floors=floors,
                           max_utterances=args.max_utterances, out_dir=args.out,
                           workers=args.workers or available_cpus(), asr=args.asr,
                           tracking_uri=args.tracking_uri, require_improvement=not args.allow_no_improvement)
    except (RegistryError, EvaluationSetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 — CI must tell "could not decide" from "refused"
        traceback.print_exc(file=sys.stderr)
        print(f"internal error: the gate could not decide ({type(err).__name__}: {err})", file=sys.stderr)
        return EXIT_INTERNAL
    print(decision.markdown())
    print(f"report: {args.out}/{REPORT_MARKDOWN}", file=sys.stderr)
    return EXIT_OK if decision.promote or decision.no_op else EXIT_REFUSED


def _pairs(options: list[str]) -> list[tuple[str, str]]:
    """['a:1,b:2', 'c:3'] -> [('a', '1'), ('b', '2'), ('c', '3')]."""
    pairs = []
    for item in (part.strip() for option in options for part in option.split(",") if part.strip()):
        metric, sep, value = item.partition(":")
        if not sep or not metric.strip() or not value.strip():
            raise ValueError(f"expected METRIC:NUMBER, got {item!r}")
        pairs.append((metric.strip(), value.strip()))
    return pairs
