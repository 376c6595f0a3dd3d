"""Celery tasks; each loads ids, calls a service and returns. Safe to run twice.

A run taken over after its worker died resumes from its tile journal (apps.annotations.journal).
"""

import logging

import torch
from celery import shared_task
from django.conf import settings

from nephroweb.leases import new_owner_id, retry_when_lease_expires

from . import services
from .models import ProposalRun

logger = logging.getLogger(__name__)


def _retry_when_lease_expires(task, run_id: int) -> None:
    retry_when_lease_expires(task, ProposalRun, run_id, f"Run {run_id}")


@shared_task(bind=True, name="apps.annotations.tasks.run_proposals", max_retries=None)
def run_proposals(self, run_id: int) -> None:
    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    if services.execute_proposal_run(run_id, owner=new_owner_id()) is None:
        _retry_when_lease_expires(self, run_id)


@shared_task(bind=True, name="apps.annotations.tasks.run_segmentation", max_retries=None)
def run_segmentation(self, run_id: int) -> None:
    from .segmentation import execute_segmentation_run

    if settings.NEPHROWEB_TORCH_THREADS > 0:
        torch.set_num_threads(settings.NEPHROWEB_TORCH_THREADS)
    if execute_segmentation_run(run_id, owner=new_owner_id()) is None:
        _retry_when_lease_expires(self, run_id)
