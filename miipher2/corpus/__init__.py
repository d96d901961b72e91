"""Restore whole corpora: plan shards, restore each (resumably), score with DNSMOS, merge.

    plan = plan_corpus("s3://bucket/corpus/manifests/train.csv", "models:/miipher2@champion", out, shards=8)
    restore_shard(out, 3)           # one shard, e.g. in a GPU pod; skips files already done
    summary = merge_shards(out)     # out/manifests/train.csv + out/summary.{json,md}

or all of it in one process: `restore_corpus(manifest, model, out, shards=...)`. The output
layout and what makes a file "done" are described in `miipher2.corpus.records`.
"""

from miipher2.corpus.merge import IncompleteCorpusError, Summary, distribution, merge_shards
from miipher2.corpus.models import ModelRef, resolve_model
from miipher2.corpus.plan import (Plan, PlanConflict, Settings, assign_shards, load_plan, plan_corpus,
                                  run_output_dir)
from miipher2.corpus.records import Layout
from miipher2.corpus.run import CorpusRun, restore_corpus
from miipher2.corpus.shard import ShardResult, model_loader, restore_shard

__all__ = ["CorpusRun", "IncompleteCorpusError", "Layout", "ModelRef", "Plan", "PlanConflict", "Settings",
           "ShardResult", "Summary", "assign_shards", "distribution", "load_plan", "merge_shards", "model_loader",
           "plan_corpus", "resolve_model", "restore_corpus", "restore_shard", "run_output_dir"]
