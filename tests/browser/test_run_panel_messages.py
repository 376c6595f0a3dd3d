"""The run panel explains a queued run and a SAM run that stored no proposal."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.annotations.models import ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot

from .conftest import PASSWORD, cmu_slide_record, in_thread, open_run_panel

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
    slide = cmu_slide_record(shared_data)
    return ProposalRun.objects.create(
        slide=slide, status=ProposalRun.Status.QUEUED, sam_type="vit_b",
        lease_owner="worker-elsewhere", lease_expires_at=soon,
    )


def test_queued_run_names_the_work_ahead(live_product, browser_page, make_user, shared_data):
    run = in_thread(_queued_behind_training, make_user, shared_data)
    page = browser_page
    open_run_panel(page, live_product, run, "anna")

    assert page.inner_text("#run-status") == f"SAM proposal run {run.pk}: queued"
    assert page.inner_text("#run-queue") == (
        'Waiting for a worker, which first finishes: training of model version "demo-model" '
        "(running, 2 of 30 epochs done)."
    )


def _run_without_proposals(make_user, shared_data):
    """A succeeded SAM run whose masks the filters all dropped, most for their area."""
    make_user("annotator", username="anna", password=PASSWORD)
    slide = cmu_slide_record(shared_data)
    return ProposalRun.objects.create(
        slide=slide, status=ProposalRun.Status.SUCCEEDED, sam_type="vit_b",
        tiles_done=6, tiles_total=6, finished_at=timezone.now(),
        counts={
            "masks_generated": 9, "dropped_too_large": 6, "dropped_low_predicted_iou": 2,
            "dropped_too_small": 1, "kept": 0, "stored": 0,
        },
    )


def test_run_without_proposals_names_top_filter(
    live_product, browser_page, make_user, shared_data
):
    run = in_thread(_run_without_proposals, make_user, shared_data)
    page = browser_page
    open_run_panel(page, live_product, run, "anna")

    assert page.inner_text("#run-message") == (
        'SAM made 9 masks, but no proposal was stored. The filter that dropped the most: '
        '"larger than the area limit" (6 of 9 masks). The counts below list every filter.'
    )
    assert page.inner_text("#run-queue") == ""
