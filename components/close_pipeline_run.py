"""The pipeline's exit handler: records how the run ended on its MLflow parent run.

It runs after everything else, whether the run succeeded, failed or was cancelled, and gets
the run's final state from KFP (`PipelineTaskFinalStatus`): a failed run's parent run ends
FAILED instead of staying FINISHED with a missing child.
"""

from kfp import dsl

from components._base import component


@component
def close_pipeline_run(experiment: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    from miipher2.lineage import close_pipeline_run

    close_pipeline_run(experiment, kfp_run_id, status.state, status.error_message or "")
