"""Leases on task rows: which worker may run a long task now.

A lease is two columns on the task's row, ``lease_owner`` and ``lease_expires_at``. A
worker takes the lease with one conditional UPDATE, renews it while it works and clears
it when done. A re-delivered task finds the lease held and returns without work, and a
task whose worker died can be taken over once the lease has expired.
"""

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone

logger = logging.getLogger(__name__)


def new_owner_id() -> str:
    """Return a lease owner id for this worker process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_seconds() -> int:
    """Return how long a lease lasts without renewal (``NEPHROWEB_TASK_LEASE_S``)."""
    return settings.NEPHROWEB_TASK_LEASE_S


def renew_interval_seconds() -> float:
    """Return how often a worker renews its lease: a third of the lease, at most 30 s."""
    return min(30.0, lease_seconds() / 3)


def acquire_lease(model, pk: int, owner: str, seconds: int | None = None) -> bool:
    """Take the lease of row ``pk`` for ``owner`` unless another owner holds an unexpired one."""
    seconds = lease_seconds() if seconds is None else seconds
    now = timezone.now()
    updated = model.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(lease_owner=owner),
        pk=pk,
    ).update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=seconds))
    return updated == 1


def renew_lease(model, pk: int, owner: str, seconds: int | None = None) -> bool:
    """Extend ``owner``'s lease on row ``pk``, or return False if the row is gone or leased
    to another owner."""
    seconds = lease_seconds() if seconds is None else seconds
    updated = model.objects.filter(pk=pk, lease_owner=owner).update(
        lease_expires_at=timezone.now() + timedelta(seconds=seconds)
    )
    return updated == 1


class LeaseLost(Exception):
    """The worker no longer holds its row's lease: the row was deleted or taken over."""


def release_lease(model, pk: int, owner: str) -> None:
    model.objects.filter(pk=pk, lease_owner=owner).update(lease_owner="", lease_expires_at=None)


def retry_when_lease_expires(task, model, pk: int, description: str):
    """Retry the Celery ``task`` one second after another worker's lease on row ``pk`` expires.

    By then that worker has finished, so the retry has nothing to do, or it died, so the
    retry takes the row's work over. Raises ``celery.exceptions.Retry``.
    """
    if not model.objects.filter(pk=pk).exists():
        # A deleted row (e.g. the run of a deleted slide) has no work left to retry.
        logger.info("%s no longer exists; the task is not retried", description)
        return None
    countdown = retry_countdown(model, pk)
    logger.info("%s: retrying in %.0f s, when the lease expires", description, countdown)
    raise task.retry(countdown=countdown)


def retry_countdown(model, pk: int) -> float:
    """Return the seconds until row ``pk``'s lease expires, plus one; 1 when it has none."""
    expires_at = model.objects.filter(pk=pk).values_list("lease_expires_at", flat=True).first()
    if expires_at is None:
        return 1.0
    return max(0.0, (expires_at - timezone.now()).total_seconds()) + 1.0


class LeaseRenewal:
    """State of a lease that ``renewing_lease`` renews. ``check`` raises once it is lost."""

    def __init__(self, model, pk: int, owner: str) -> None:
        self.model, self.pk, self.owner = model, pk, owner
        self.lost = threading.Event()

    def check(self) -> None:
        """Raise LeaseLost if a renewal found the row deleted or its lease taken over."""
        if self.lost.is_set():
            raise LeaseLost(
                f"{self.model.__name__} {self.pk}: lease of {self.owner} lost (row deleted "
                "or taken over by another worker)"
            )


@contextmanager
def renewing_lease(model, pk: int, owner: str):
    """Renew ``owner``'s lease on row ``pk`` from a thread while the block runs.

    Work that takes longer than a lease between two natural renewal points (one slow
    tile, one long computation) keeps its lease this way. Yields a LeaseRenewal whose
    ``check`` the work calls between steps, so that it stops once the row is deleted or
    another worker holds the lease. The caller takes and releases the lease itself.
    Inside a transaction the block runs without renewal, because no other connection can
    see the lease row until commit.
    """
    renewal = LeaseRenewal(model, pk, owner)
    if connection.in_atomic_block:
        yield renewal
        return
    stop = threading.Event()

    def renew() -> None:
        try:
            while not stop.wait(renew_interval_seconds()):
                if not renew_lease(model, pk, owner):
                    logger.warning(
                        "%s %s: lease of %s lost (row deleted or taken over)",
                        model.__name__, pk, owner,
                    )
                    renewal.lost.set()
                    return
        finally:
            connection.close()

    renewer = threading.Thread(target=renew, name=f"lease-{model.__name__}-{pk}", daemon=True)
    renewer.start()
    try:
        yield renewal
    finally:
        stop.set()
        renewer.join()
