"""Celery tasks; each loads ids, calls a service and returns. Safe to run twice."""

import logging
import os
import socket
import uuid

import torch
from celery import shared_task
from django.conf import settings

from . import services

logger = logging.getLogger(__name__)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@shared_task(name="apps.annotations.tasks.run_proposals")
def run_proposals(run_id: int) -> None:
    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    services.execute_proposal_run(run_id, owner=_worker_id())


@shared_task(name="apps.annotations.tasks.run_segmentation")
def run_segmentation(run_id: int) -> None:
    from .segmentation import execute_segmentation_run

    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    execute_segmentation_run(run_id, owner=_worker_id())
