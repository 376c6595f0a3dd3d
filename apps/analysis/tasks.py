"""Celery tasks of the analysis app. Each loads an id, calls a service and returns.

They run on the default queue, because they read files and the database and need no GPU.
"""

from celery import shared_task


@shared_task(name="apps.analysis.tasks.run_evaluation")
def run_evaluation(evaluation_id: int) -> None:
    """Compute one queued model evaluation; a re-delivered task returns the stored one."""
    from .evaluations import execute_evaluation

    execute_evaluation(evaluation_id)
