"""Leases on task rows: which worker may run a long task now.

A lease is two columns on the task's row, ``lease_owner`` and ``lease_expires_at``. A
worker takes the lease with one conditional UPDATE, renews it while it works and clears
it when done. A re-delivered task finds the lease held and returns without work, and a
task whose worker died can be taken over once the lease has expired.
"""

from datetime import timedelta

from django.db.models import Q
from django.utils import timezone

LEASE_S = 300


def acquire_lease(model, pk: int, owner: str, seconds: int = LEASE_S) -> bool:
    """Take the lease of row ``pk`` for ``owner`` unless another owner holds an unexpired one."""
    now = timezone.now()
    updated = model.objects.filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(lease_owner=owner),
        pk=pk,
    ).update(lease_owner=owner, lease_expires_at=now + timedelta(seconds=seconds))
    return updated == 1


def renew_lease(model, pk: int, owner: str, seconds: int = LEASE_S) -> None:
    model.objects.filter(pk=pk, lease_owner=owner).update(
        lease_expires_at=timezone.now() + timedelta(seconds=seconds)
    )


def release_lease(model, pk: int, owner: str) -> None:
    model.objects.filter(pk=pk, lease_owner=owner).update(lease_owner="", lease_expires_at=None)
