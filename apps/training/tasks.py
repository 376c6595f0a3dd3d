"""Celery task of model training; it loads an id, calls the service and returns."""

import os
import socket
import uuid

from celery import shared_task
from django.conf import settings

from . import services


@shared_task(name="apps.training.tasks.run_training")
def run_training(version_id: int) -> None:
    """Train one model version; a re-delivered task skips or resumes, never repeats."""
    import torch

    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    services.execute_training(version_id, owner=owner)
