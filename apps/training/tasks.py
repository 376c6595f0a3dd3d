"""Celery task of model training; it loads an id, calls the service and returns."""

from celery import shared_task
from django.conf import settings

from nephroweb.leases import new_owner_id, retry_when_lease_expires

from . import services
from .models import ModelVersion


@shared_task(bind=True, name="apps.training.tasks.run_training", max_retries=None)
def run_training(self, version_id: int) -> None:
    """Train one model version; a re-delivered task resumes, never runs twice at once.

    A delivery that finds another worker's lease is retried when that lease would expire,
    so a version whose worker died is resumed by the retry.
    """
    import torch

    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    if services.execute_training(version_id, owner=new_owner_id()) is None:
        retry_when_lease_expires(self, ModelVersion, version_id, f"Model version {version_id}")
