"""Enqueue the tasks of unfinished runs again when a worker starts.

A run whose task message is gone would otherwise stay queued or running for ever. The
demo's file-system broker deletes a message when a worker takes it, so a worker killed
mid-task loses it, and a Redis server restarted without persistence loses every queued
message. Enqueuing a run twice is safe: the lease makes the second delivery wait while
the first runs, and a run that has finished is not run again.
"""

import logging

logger = logging.getLogger(__name__)


def unfinished_tasks() -> list[tuple[object, int]]:
    """Return (Celery task, row id) for every queued or running run, version and evaluation."""
    from apps.analysis.models import ModelEvaluation
    from apps.analysis.tasks import run_evaluation
    from apps.annotations.models import ProposalRun
    from apps.annotations.tasks import run_proposals, run_segmentation
    from apps.training.models import ModelVersion
    from apps.training.tasks import run_training

    unfinished = []
    runs = ProposalRun.objects.filter(
        status__in=[ProposalRun.Status.QUEUED, ProposalRun.Status.RUNNING]
    ).order_by("pk")
    for run_id, model_version_id in runs.values_list("pk", "model_version_id"):
        unfinished.append((run_proposals if model_version_id is None else run_segmentation, run_id))
    versions = ModelVersion.objects.filter(
        status__in=[ModelVersion.Status.QUEUED, ModelVersion.Status.RUNNING]
    ).order_by("pk")
    unfinished += [(run_training, pk) for pk in versions.values_list("pk", flat=True)]
    evaluations = ModelEvaluation.objects.filter(
        status__in=[ModelEvaluation.Status.QUEUED, ModelEvaluation.Status.RUNNING]
    ).order_by("pk")
    unfinished += [(run_evaluation, pk) for pk in evaluations.values_list("pk", flat=True)]
    return unfinished


def requeue_unfinished_tasks() -> int:
    """Enqueue the task of every unfinished run again and return how many were enqueued."""
    unfinished = unfinished_tasks()
    for task, row_id in unfinished:
        task.delay(row_id)
    if unfinished:
        logger.info(
            "Enqueued unfinished tasks again at worker start (%d): %s",
            len(unfinished), ", ".join(f"{task.name}({row_id})" for task, row_id in unfinished),
        )
    return len(unfinished)
