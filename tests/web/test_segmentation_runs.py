"""Segmentation runs of a class-aware model version: storage rules, review safety, the API.

The model is the tiny SAM with a random class head, so these tests check that the
worker stores exactly what ml.segmentation returns and never touches reviewed work, not
segmentation quality (tests/web/test_model_lifecycle.py trains on real kidney tiles).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from shapely.geometry import box, shape

from apps.analysis.predictions import PredictionsFileError, load_run_predictions
from apps.annotations import segmentation
from apps.annotations.geometry import instance_row
from apps.annotations.models import Instance, ProposalRun
from apps.review import services as review
from apps.slides.models import Slide
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.checkpoints import file_sha256
from ml.segmentation import SegmentationSettings, segment_slide
from ml.slide import open_slide
from ml.tissue import detect_tissue
from tests.sam_factory import TINY_CLASS_NAMES, save_tiny_class_aware
from tests.web.conftest import FAST_SEGMENTATION

pytestmark = pytest.mark.django_db

CLASS_NAMES = list(TINY_CLASS_NAMES)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    return save_tiny_class_aware(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture
def fast_segmentation(settings):
    settings.NEPHROWEB_SEGMENTATION = dict(FAST_SEGMENTATION)
    return settings


@pytest.fixture
def cmu_slide(shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    return Slide.objects.get()


def make_version(weights_file, status=ModelVersion.Status.SUCCEEDED, name="model-a"):
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    return ModelVersion.objects.create(
        name=name, status=status, snapshot=snapshot, mpp=1.0, crop_px=1024,
        class_names=CLASS_NAMES, weights_path=str(weights_file),
        weights_sha256=file_sha256(weights_file),
    )


@pytest.fixture
def version(weights_file):
    return make_version(weights_file)


def run_to_end(slide, version, **kwargs) -> ProposalRun:
    run = segmentation.start_segmentation_run(slide, version, enqueue=False, **kwargs)
    segmentation.execute_segmentation_run(run.pk, owner="test-worker")
    run.refresh_from_db()
    assert run.status == ProposalRun.Status.SUCCEEDED, run.message
    return run


def test_stored_proposals_are_what_the_model_segmented(cmu_slide, version, fast_segmentation, shared_data):
    run = run_to_end(cmu_slide, version)

    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as slide_file:
        expected = segment_slide(
            slide_file, segmentation.load_model_version(version),
            SegmentationSettings.from_dict(run.settings), detect_tissue(slide_file),
        )
    stored = list(Instance.objects.filter(slide=cmu_slide).order_by("id"))
    assert len(stored) == len(expected.instances) == run.counts["stored"] == run.counts["kept"] > 0
    assert sorted((i.class_name, round(shape(i.geometry).area)) for i in stored) == sorted(
        (e.class_name, round(e.polygon_level0.area)) for e in expected.instances
    )
    assert {i.class_name for i in stored} <= {"glomerulus", "vessel"}
    assert all(i.source == Instance.Source.MODEL for i in stored)
    assert all(i.review_state == Instance.ReviewState.PENDING for i in stored)
    assert all(i.proposal_run_id == run.pk for i in stored)
    assert all(0.0 < i.class_confidence <= 1.0 for i in stored)
    assert run.counts["stored_per_class"] == {
        "glomerulus": sum(i.class_name == "glomerulus" for i in stored),
        "vessel": sum(i.class_name == "vessel" for i in stored),
    }
    assert run.counts["dropped_background"] == expected.counts["dropped_background"] > 0
    assert run.settings["mpp"] == 1.0
    assert run.settings["background_class"] == "background"
    assert run.checkpoint_sha256 == version.weights_sha256
    assert run.tiles_done == run.tiles_total == expected.tiles_processed
    predictions = load_run_predictions(run)
    assert sorted((p.class_name, round(p.geometry_level0.area)) for p in predictions) == sorted(
        (e.class_name, round(e.polygon_level0.area)) for e in expected.instances
    )


def test_rerun_replaces_pending_model_proposals_and_spares_reviewed_work(
    cmu_slide, version, fast_segmentation, make_user
):
    first = run_to_end(cmu_slide, version)
    first_outlines = [shape(i.geometry) for i in Instance.objects.filter(proposal_run=first)]
    reviewer = make_user("annotator")
    kept = Instance.objects.filter(proposal_run=first).order_by("id").first()
    accepted = review.accept(kept.pk, user=reviewer, version=kept.version)
    accepted_before = (accepted.geometry, accepted.version, accepted.class_name)
    sam_proposal = instance_row(
        box(0, 0, 40, 40), slide=cmu_slide, mpp=cmu_slide.mpp, source=Instance.Source.SAM
    )
    sam_proposal.save()

    second = run_to_end(cmu_slide, version)

    accepted.refresh_from_db()
    assert (accepted.geometry, accepted.version, accepted.class_name) == accepted_before
    assert accepted.review_state == Instance.ReviewState.ACCEPTED
    assert Instance.objects.filter(pk=sam_proposal.pk).exists()
    assert not Instance.objects.filter(proposal_run=first, review_state="pending").exists()
    # The same model on the same slide finds the same objects again. Those covering at
    # least half of the accepted outline, or half of themselves, are dropped: the accepted
    # one itself and any random mask stacked on it.
    accepted_outline = shape(accepted.geometry)
    overlapping = sum(
        outline.intersection(accepted_outline).area
        >= 0.5 * min(outline.area, accepted_outline.area)
        for outline in first_outlines
    )
    assert overlapping >= 1
    assert second.counts["dropped_overlaps_reviewed"] == overlapping
    assert second.counts["stored"] == first.counts["stored"] - overlapping
    assert Instance.objects.filter(proposal_run=second).count() == second.counts["stored"]
    # The run's predictions file keeps what the queue dropped.
    assert len(load_run_predictions(second)) == second.counts["kept"] == first.counts["stored"]


def test_predictions_file_problems_are_named(cmu_slide, version, fast_segmentation):
    run = run_to_end(cmu_slide, version)
    Path(run.predictions_file).write_text('{"type": "FeatureCollection", "features": [{}]}')
    with pytest.raises(PredictionsFileError, match=f"predictions file of run {run.pk} cannot be read"):
        load_run_predictions(run)
    Path(run.predictions_file).unlink()
    with pytest.raises(PredictionsFileError, match=f"predictions file of run {run.pk} is missing"):
        load_run_predictions(run)
    run.predictions_file = ""
    with pytest.raises(PredictionsFileError, match="segment the slide again with this model version"):
        load_run_predictions(run)


def test_replaced_weights_file_fails_the_run_with_its_name(cmu_slide, weights_file, fast_segmentation, tmp_path):
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(weights_file.read_bytes())
    (tmp_path / "model.json").write_bytes(weights_file.with_suffix(".json").read_bytes())
    version = make_version(copy)
    with copy.open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    run = segmentation.start_segmentation_run(cmu_slide, version, enqueue=False)
    segmentation.execute_segmentation_run(run.pk, owner="test-worker")
    run.refresh_from_db()
    assert run.status == ProposalRun.Status.FAILED
    assert str(copy) in run.message
    assert "SHA-256" in run.message
    assert not Instance.objects.filter(slide=cmu_slide).exists()


def test_version_that_did_not_succeed_cannot_segment(cmu_slide, weights_file):
    failed = make_version(weights_file, status=ModelVersion.Status.FAILED, name="broken")
    with pytest.raises(segmentation.ModelVersionUnusableError, match="broken"):
        segmentation.start_segmentation_run(cmu_slide, failed, enqueue=False)
    assert not ProposalRun.objects.exists()


def test_api_starts_a_segmentation_run(cmu_slide, version, weights_file, client_for, fast_segmentation):
    make_version(weights_file, status=ModelVersion.Status.RUNNING, name="still-training")
    client = client_for("annotator")
    listed = client.get("/api/segmentation-models/").json()
    assert [row["id"] for row in listed] == [version.pk]
    assert listed[0]["class_names"] == CLASS_NAMES

    response = client.post(
        f"/api/slides/{cmu_slide.pk}/proposal-runs/", {"model_version": version.pk},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model_version"] == version.pk
    assert body["model_version_name"] == "model-a"
    assert body["status"] == "queued"
    run = ProposalRun.objects.get(pk=body["id"])
    assert run.model_version_id == version.pk
    assert run.settings["points_per_side"] == 4


@pytest.mark.parametrize(("payload", "field"), [
    ({"model_version": 999999}, "model_version"),
    ({"model_version": "abc"}, "model_version"),
    ({"model_version": 1, "sam_type": "vit_b"}, "sam_type"),
    ({"settings": {"points_per_side": 0}}, "points_per_side"),
])
def test_api_rejects_bad_requests_naming_the_field(cmu_slide, client_for, payload, field):
    response = client_for("annotator").post(
        f"/api/slides/{cmu_slide.pk}/proposal-runs/", payload, content_type="application/json"
    )
    assert response.status_code == 400
    assert field in response.content.decode()
    assert not ProposalRun.objects.exists()


def test_model_settings_override_rejects_unknown_field(cmu_slide, version, client_for):
    response = client_for("annotator").post(
        f"/api/slides/{cmu_slide.pk}/proposal-runs/",
        {"model_version": version.pk, "settings": {"min_class_prob": 0.2}},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "min_class_prob" in response.content.decode()


def test_cortex_annotation_does_not_block_proposals_inside_it(cmu_slide, version, fast_segmentation):
    cortex = instance_row(
        box(0, 0, cmu_slide.width_px, cmu_slide.height_px), slide=cmu_slide, mpp=cmu_slide.mpp,
        source=Instance.Source.DRAWN, class_name="cortex", review_state=Instance.ReviewState.ACCEPTED,
    )
    cortex.save()

    run = run_to_end(cmu_slide, version)

    assert run.counts["dropped_overlaps_reviewed"] == 0
    assert run.counts["stored"] == run.counts["kept"] > 0


def test_cancel_after_predictions_file_stores_nothing(
    cmu_slide, version, fast_segmentation, monkeypatch
):
    from apps.annotations import services

    first = run_to_end(cmu_slide, version)
    previous = sorted(Instance.objects.filter(proposal_run=first).values_list("id", flat=True))
    run = segmentation.start_segmentation_run(cmu_slide, version, enqueue=False)
    original_write = segmentation.write_run_predictions
    written = []

    # The request arrives after the predictions file is written and before the store.
    def write_then_cancel(run_row, predictions):
        written.append(original_write(run_row, predictions))
        services.cancel_run(ProposalRun.objects.get(pk=run.pk), user=None)
        return written[-1]

    monkeypatch.setattr(segmentation, "write_run_predictions", write_then_cancel)
    stopped = segmentation.execute_segmentation_run(run.pk, owner="test-worker")

    assert stopped.status == ProposalRun.Status.CANCELLED
    assert stopped.message == f"Cancelled after {stopped.tiles_total} of {stopped.tiles_total} tiles."
    assert stopped.predictions_file == ""
    assert len(written) == 1
    assert not Path(written[0]).exists()
    assert Instance.objects.filter(proposal_run=run).count() == 0
    pending = Instance.objects.filter(slide=cmu_slide, review_state="pending")
    assert sorted(pending.values_list("id", flat=True)) == previous
