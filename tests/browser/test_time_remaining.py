"""The slide page's run panel and the Training page show the server's time-remaining estimate.

The running proposal run and model version are rows that no worker was asked to run.
Their leases belong to a worker elsewhere, so the live worker's start-up recovery only
schedules a retry for when those leases expire, and their progress stays where the test
put it while the pages poll the API.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.annotations.models import ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot

from .conftest import PASSWORD, cmu_slide_record, in_thread, sign_in

pytestmark = pytest.mark.browser

# 100 of 101 units done in 18 000 s leaves 180 s ("about 3 min"). The seconds the test
# itself takes move the estimate by 1/100 of them, so the text stays the same.
UNITS_DONE = 100
UNITS_TOTAL = 101
ELAPSED = timedelta(seconds=18_000)


def _running_work(make_user, shared_data):
    """Create an admin, a slide with a running proposal run, and a running model version."""
    make_user("admin", username="ada", password=PASSWORD)
    slide = cmu_slide_record(shared_data)
    started_at = timezone.now() - ELAPSED
    lease = {
        "lease_owner": "worker-elsewhere",
        "lease_expires_at": timezone.now() + timedelta(hours=1),
    }
    run = ProposalRun.objects.create(
        slide=slide, status=ProposalRun.Status.RUNNING, sam_type="vit_b",
        tiles_done=UNITS_DONE, tiles_total=UNITS_TOTAL, started_at=started_at, **lease,
    )
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2)
    version = ModelVersion.objects.create(
        name="slow-version", status=ModelVersion.Status.RUNNING, snapshot=snapshot, mpp=1.0,
        crop_px=256, config={"epochs": UNITS_TOTAL},
        metrics=[{"epoch": epoch, "train_loss": 1.0} for epoch in range(1, UNITS_DONE + 1)],
        started_at=started_at, **lease,
    )
    return slide.pk, run.pk, version.pk


def test_pages_show_time_left(live_product, browser_page, make_user, shared_data):
    slide_id, run_id, version_id = in_thread(_running_work, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "ada")

    page.goto(f"{live_product}/slides/{slide_id}/")
    page.wait_for_function("document.querySelector('#run-panel').dataset.runStatus === 'running'")
    run_status = page.inner_text("#run-status")
    assert f"SAM proposal run {run_id}: running" in run_status
    assert f"({UNITS_DONE} / {UNITS_TOTAL} tiles with tissue, about 3 min left)" in run_status

    page.goto(f"{live_product}/training/")
    row = page.locator(f"tr[data-version-id='{version_id}']")
    row.wait_for()
    assert f"{UNITS_DONE} / {UNITS_TOTAL}, about 3 min left" in row.inner_text()
    row.locator("button", has_text="Show").click()
    detail_status = page.locator("#version-detail-status")
    assert "about 3 min left" in detail_status.inner_text()
    assert f"epoch {UNITS_DONE} of {UNITS_TOTAL}" in detail_status.inner_text()
