"""Estimated time remaining of a long task, from its mean rate so far."""

from datetime import datetime

from django.utils import timezone


def estimate_seconds_remaining(started_at: datetime | None, units_done: int, units_total: int,
                               now: datetime | None = None) -> int | None:
    """Estimate the whole seconds left: elapsed time per finished unit times the units left.

    Units are tiles of a proposal run or epochs of a training run. Returns None before the
    first unit is finished (no rate yet) or without a start time or total, and 0 once
    every unit is done. The estimate assumes the remaining units take as long as the
    finished ones on average, so set-up time before the first unit (loading the model,
    cutting crops) makes early estimates too high.
    NOTE: between two finished units the elapsed time grows and so does the estimate.
    With epochs of minutes, the Training page's estimate rises until the next epoch ends.
    """
    if started_at is None or units_total <= 0 or units_done <= 0:
        return None
    if units_done >= units_total:
        return 0
    elapsed_s = max(((now or timezone.now()) - started_at).total_seconds(), 0.0)
    return round(elapsed_s / units_done * (units_total - units_done))
