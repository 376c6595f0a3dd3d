"""An annotator cancels a queued and a running proposal run from the slide page's run panel.

The runs are rows whose leases belong to a worker elsewhere, so the live worker's
start-up recovery only schedules a retry for when those leases expire. The running run
therefore stays "running" with its cancel request until the test stops it as its worker
would.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.annotations.models import ProposalRun

from .conftest import PASSWORD, cmu_slide_record, in_thread, open_run_panel

pytestmark = pytest.mark.browser


def _slide_with_run(make_user, shared_data, status):
    """Create the annotator anna and a slide with one run in ``status``, leased elsewhere."""
    make_user("annotator", username="anna", password=PASSWORD)
    slide = cmu_slide_record(shared_data)
    return ProposalRun.objects.create(
        slide=slide, status=status, sam_type="vit_b", tiles_done=1, tiles_total=4,
        started_at=timezone.now() if status == ProposalRun.Status.RUNNING else None,
        lease_owner="worker-elsewhere", lease_expires_at=timezone.now() + timedelta(hours=1),
    )


def test_cancel_queued_run(live_product, browser_page, make_user, shared_data):
    run = in_thread(_slide_with_run, make_user, shared_data, ProposalRun.Status.QUEUED)
    page = browser_page
    open_run_panel(page, live_product, run, "anna")
    assert page.is_visible("#cancel-run")
    assert page.inner_text("#cancel-run") == "Cancel run"
    assert page.inner_text("#run-status").startswith(f"SAM proposal run {run.pk}: queued")
    assert page.inner_text("#run-queue") == (
        "Waiting for a worker. Nothing is ahead of this run, so it should start within "
        "seconds. If it stays queued, ask an administrator to check that a worker serves the "
        "gpu queue."
    )

    page.click("#cancel-run")
    page.wait_for_function("document.querySelector('#run-panel').dataset.runStatus === 'cancelled'")

    assert page.inner_text("#run-status").startswith(f"SAM proposal run {run.pk}: cancelled")
    assert page.inner_text("#run-message") == "Cancelled by anna before it started."
    assert page.inner_text("#run-queue") == ""
    assert page.is_hidden("#cancel-run")
    row = in_thread(ProposalRun.objects.get, pk=run.pk)
    assert (row.status, row.cancel_requested, row.message) == (
        "cancelled", True, "Cancelled by anna before it started."
    )


def test_cancel_running_run_shows_cancelling(live_product, browser_page, make_user, shared_data):
    run = in_thread(_slide_with_run, make_user, shared_data, ProposalRun.Status.RUNNING)
    page = browser_page
    open_run_panel(page, live_product, run, "anna")
    assert page.inner_text("#run-status").endswith(" left)")

    with page.expect_response(f"**/api/proposal-runs/{run.pk}/cancel/") as cancel:
        page.click("#cancel-run")
    assert cancel.value.status == 200
    page.wait_for_function("document.querySelector('#cancel-run').textContent === 'Cancelling…'")

    assert page.is_disabled("#cancel-run")
    # No time-left estimate while the run stops.
    assert page.inner_text("#run-status") == (
        f"SAM proposal run {run.pk}: stopping after the current tile (1 / 4 tiles with tissue)"
    )
    row = in_thread(ProposalRun.objects.get, pk=run.pk)
    assert (row.status, row.cancel_requested) == ("running", True)

    # The worker reaches its next tile and stops, as services.execute_run does.
    in_thread(
        lambda: ProposalRun.objects.filter(pk=run.pk).update(
            status=ProposalRun.Status.CANCELLED, finished_at=timezone.now(),
            message="Cancelled by anna after 2 of 4 tiles.", tiles_done=2,
        )
    )
    page.wait_for_function("document.querySelector('#run-panel').dataset.runStatus === 'cancelled'")

    assert page.inner_text("#run-message") == "Cancelled by anna after 2 of 4 tiles."
    # The ink colour of the page, not the red of a failure.
    assert page.eval_on_selector("#run-message", "e => getComputedStyle(e).color") == (
        "rgb(29, 36, 48)"
    )
    assert page.is_hidden("#cancel-run")
