"""Celery tasks of the analysis app. Each loads an id, calls a service and returns.

They run on the default queue, because they read files and the database and need no GPU.
"""

from celery import shared_task

from nephroweb.leases import retry_when_lease_expires


@shared_task(bind=True, name="apps.analysis.tasks.run_evaluation", max_retries=None)
def run_evaluation(self, evaluation_id: int) -> None:
    """Compute one queued model evaluation; a re-delivered task returns the stored one.

    A delivery that finds another worker's lease is retried when that lease would expire.
    """
    from .evaluations import execute_evaluation
    from .models import ModelEvaluation

    if execute_evaluation(evaluation_id) is None:
        retry_when_lease_expires(
            self, ModelEvaluation, evaluation_id, f"Evaluation {evaluation_id}"
        )
