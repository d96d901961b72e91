"""One KFP component per pipeline step. Each maps KFP artifacts to paths and calls one
function of `miipher2.steps`; the library never imports kfp."""

from components.close_pipeline_run import close_pipeline_run
from components.evaluate import evaluate
from components.finetune_vocoder import finetune_vocoder
from components.pretrain_vocoder import pretrain_vocoder
from components.register import register
from components.reject_dataset import reject_dataset
from components.train_pa import train_pa
from components.validate_data import validate_data

__all__ = ["validate_data", "train_pa", "pretrain_vocoder", "finetune_vocoder", "evaluate", "register",
           "reject_dataset", "close_pipeline_run"]
