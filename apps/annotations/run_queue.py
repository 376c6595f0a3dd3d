"""The work a queued run waits for: the unfinished tasks ahead of it on the "gpu" queue.

Proposal runs, segmentation runs and training share the Celery queue "gpu", and its
workers take one task at a time. A run that stays queued waits behind that work, or no
worker serves the queue. The slide page shows the user which.
"""

from django.db.models import Q

from .models import ProposalRun

# The slide page lists at most this many tasks and counts the rest.
LISTED_TASKS = 3


def _run_text(run: ProposalRun) -> str:
    kind = (
        f'segmentation run {run.pk} with "{run.model_version.name}"'
        if run.model_version_id else f"SAM proposal run {run.pk}"
    )
    progress = (
        f", {run.tiles_done} of {run.tiles_total} tiles"
        if run.status == ProposalRun.Status.RUNNING and run.tiles_total else ""
    )
    return f'{kind} on slide "{run.slide.name}" ({run.status}{progress})'


def _version_text(version) -> str:
    epochs = version.config.get("epochs")
    progress = (
        f", {len(version.metrics)} of {epochs} epochs done"
        if version.status == version.Status.RUNNING and epochs else ""
    )
    return f'training of model version "{version.name}" ({version.status}{progress})'


def work_ahead(run: ProposalRun) -> list[str]:
    """Describe the gpu-queue tasks ahead of queued ``run``, oldest first.

    Ahead are the tasks that run now and those queued before ``run``. The list ends with
    "N more" when it is longer than LISTED_TASKS. Empty when ``run`` is not queued.
    """
    from apps.training.models import ModelVersion

    if run.status != ProposalRun.Status.QUEUED:
        return []
    running_or_earlier = (
        Q(status=ProposalRun.Status.RUNNING)
        | Q(status=ProposalRun.Status.QUEUED, created_at__lt=run.created_at)
    )
    runs = (
        ProposalRun.objects.filter(running_or_earlier).exclude(pk=run.pk)
        .select_related("slide", "model_version")
    )
    versions = ModelVersion.objects.filter(
        Q(status=ModelVersion.Status.RUNNING)
        | Q(status=ModelVersion.Status.QUEUED, created_at__lt=run.created_at)
    )
    ahead = sorted(
        [(other.created_at, _run_text(other)) for other in runs]
        + [(version.created_at, _version_text(version)) for version in versions]
    )
    texts = [text for _, text in ahead]
    if len(texts) > LISTED_TASKS:
        texts = texts[:LISTED_TASKS] + [f"{len(texts) - LISTED_TASKS} more"]
    return texts
