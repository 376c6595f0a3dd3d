"""A reviewer segments a slide with a trained model version in Chromium and reviews the
labelled proposals. The model's weights are random, so this checks plumbing only."""

import pytest
from django.core.management import call_command

from apps.annotations.models import Instance, ProposalRun
from apps.slides.models import Slide
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.checkpoints import file_sha256
from tests.sam_factory import TINY_CLASS_NAMES, save_tiny_class_aware

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser


def _slide_and_version(make_user, shared_data, weights_path):
    make_user("annotator", username="anna", password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    snapshot = TrainingSnapshot.objects.create(
        validation_fraction=0.2, class_names=list(TINY_CLASS_NAMES)
    )
    ModelVersion.objects.create(
        name="model-failed", status=ModelVersion.Status.FAILED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=list(TINY_CLASS_NAMES),
    )
    return ModelVersion.objects.create(
        name="model-tiny", status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=list(TINY_CLASS_NAMES), weights_path=str(weights_path),
        weights_sha256=file_sha256(weights_path),
    )


def test_segmentation_run_fills_the_review_queue_with_labelled_proposals(
    live_product, browser_page, make_user, shared_data, tmp_path
):
    weights = save_tiny_class_aware(tmp_path / "model.safetensors")
    version = in_thread(_slide_and_version, make_user, shared_data, weights)
    slide = in_thread(Slide.objects.get)

    page = browser_page
    sign_in(page, live_product, "anna")
    page.goto(f"{live_product}/slides/{slide.pk}/")
    page.wait_for_function("!document.querySelector('#start-segmentation').disabled")
    options = page.eval_on_selector_all("#segment-model option", "els => els.map(e => e.value)")
    assert options == [str(version.pk)]

    page.click("#start-segmentation")
    page.wait_for_function(
        "['succeeded', 'failed'].includes(document.querySelector('#run-panel').dataset.runStatus)",
        timeout=240_000,
    )
    run = in_thread(ProposalRun.objects.get)
    assert run.status == "succeeded", run.message
    assert run.model_version_id == version.pk
    stored = run.counts["stored"]
    assert stored > 0
    assert f"Segmentation run {run.pk} with model-tiny: succeeded" in page.inner_text("#run-status")
    assert page.inner_text("[data-count=stored]") == str(stored)
    for class_name, count in run.counts["stored_per_class"].items():
        assert page.inner_text(f"[data-count='stored:{class_name}']") == str(count)
    page.wait_for_function(
        f"Number(document.querySelector('#instance-overlay').dataset.drawn) === {stored}",
        timeout=30_000,
    )

    # The queue's first object is a labelled model proposal; accepting it keeps its class.
    rows = in_thread(lambda: list(Instance.objects.filter(proposal_run=run).values(
        "id", "class_name", "source")))
    assert {row["source"] for row in rows} == {"model"}
    page.wait_for_function("document.querySelector('#current-object')?.dataset.instanceId")
    current_id = int(page.get_attribute("#current-object", "data-instance-id"))
    current = next(row for row in rows if row["id"] == current_id)
    assert page.get_attribute("#current-object", "data-class-name") == current["class_name"]
    assert "model (model-tiny)" in page.inner_text("#current-object")
    page.keyboard.press("a")
    page.wait_for_function(
        f"document.querySelector('#current-object')?.dataset.instanceId !== '{current_id}'"
    )
    accepted = in_thread(Instance.objects.get, pk=current_id)
    assert (accepted.review_state, accepted.class_name) == ("accepted", current["class_name"])
