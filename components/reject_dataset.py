"""The validation gate's other branch: an invalid dataset fails the run, so CI and the KFP UI
show red, with the validation report in the step's log (and as the validate step's artifact)."""

from kfp.dsl import Input, Markdown

from components._base import component


@component
def reject_dataset(report: Input[Markdown]):
    from miipher2.steps import reject_dataset

    reject_dataset(report.path)
