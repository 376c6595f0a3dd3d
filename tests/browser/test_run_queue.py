"""The run panel shows what a queued run waits for."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.annotations.models import ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.conftest import create_slide_record

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser


def _queued_behind_training(make_user, shared_data):
    """A queued run on a slide, behind a running training leased to a worker elsewhere."""
    make_user("annotator", username="anna", password=PASSWORD)
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=["glomerulus"])
    soon = timezone.now() + timedelta(hours=1)
    ModelVersion.objects.create(
        name="demo-model", status=ModelVersion.Status.RUNNING, snapshot=snapshot, mpp=1.0,
        crop_px=256, class_names=["glomerulus"], config={"epochs": 30},
        metrics=[{"epoch": 1}, {"epoch": 2}], lease_owner="worker-elsewhere",
        lease_expires_at=soon,
    )
    slide = create_slide_record(
        name="cmu-1-small-region", width_px=2220, height_px=2967, mpp=0.499,
        file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
    )
    return ProposalRun.objects.create(
        slide=slide, status=ProposalRun.Status.QUEUED, sam_type="vit_b",
        lease_owner="worker-elsewhere", lease_expires_at=soon,
    )


def test_queued_run_names_the_work_ahead(live_product, browser_page, make_user, shared_data):
    run = in_thread(_queued_behind_training, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "anna")
    page.goto(f"{live_product}/slides/{run.slide_id}/")
    page.wait_for_function(
        f"document.querySelector('#run-status').textContent.startsWith('SAM proposal run {run.pk}')"
    )

    assert page.inner_text("#run-status") == f"SAM proposal run {run.pk}: queued"
    assert page.inner_text("#run-queue") == (
        'Waiting for a worker, which first finishes: training of model version "demo-model" '
        "(running, epoch 2 of 30)."
    )
