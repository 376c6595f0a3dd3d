"""Proposal and segmentation runs on odd slides, through the API and the Celery tasks.

A slide damaged after import (a cut or corrupted copy of the real SVS) ends its run as
failed, with a message that names the file and no traceback, and no instance is
created. Odd but usable slides (glass only, smaller than one tile, transparent borders)
finish their runs.
"""

from __future__ import annotations

import shutil

import pytest

from apps.annotations.models import Instance, ProposalRun
from apps.annotations.tasks import run_proposals, run_segmentation
from apps.slides.services import import_slide
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.checkpoints import file_sha256
from ml.proposals import MASK_OUTCOMES
from tests.bad_inputs import slide_files
from tests.bad_inputs.conftest import assert_no_traceback, run_command
from tests.sam_factory import TINY_CLASS_NAMES, save_tiny_class_aware

pytestmark = pytest.mark.django_db

CUT_MESSAGE = "OpenSlide cannot read this file"
CUT_HINT = "It may be truncated, corrupt or a variant OpenSlide does not support."
CORRUPT_MESSAGE = "OpenSlide failed to read level 0 at (0, 0)"
CORRUPT_HINT = "The file may be truncated or corrupt, so re-export or re-copy it."


@pytest.fixture
def slide_copy(shared_data, inputs_dir):
    """Import a copy of the real SVS as a slide, for tests that damage the copy afterwards."""
    path = inputs_dir / "biopsy.svs"
    shutil.copyfile(shared_data / slide_files.REAL_SVS, path)
    return import_slide(path)


def _cut_in_half(slide):
    with open(slide.file_path, "r+b") as handle:
        handle.truncate(len(handle.read()) // 2)


def _zero_tile_data(slide):
    with open(slide.file_path, "r+b") as handle:
        handle.seek(slide_files.SVS_TILE_DATA_START)
        handle.write(bytes(slide_files.SVS_TILE_DATA_END - slide_files.SVS_TILE_DATA_START))


DAMAGES = [
    (_cut_in_half, CUT_MESSAGE, CUT_HINT),
    (_zero_tile_data, CORRUPT_MESSAGE, CORRUPT_HINT),
]


def _assert_failed(run_id, slide, message, hint, client):
    run = ProposalRun.objects.get(pk=run_id)
    assert run.status == ProposalRun.Status.FAILED
    assert run.message.startswith(f"{slide.file_path}: {message}")
    assert hint in run.message
    assert_no_traceback(run.message)
    assert run.counts == {}
    assert Instance.objects.filter(slide=slide).count() == 0
    run_json = client.get(f"/api/proposal-runs/{run_id}/").json()
    assert run_json["status"] == "failed"
    assert run_json["message"] == run.message


@pytest.mark.parametrize(("damage", "message", "hint"), DAMAGES)
def test_proposal_run_on_damaged_slide(
    damage, message, hint, slide_copy, client_for, fast_proposals
):
    client = client_for("annotator")
    damage(slide_copy)

    response = client.post(
        f"/api/slides/{slide_copy.pk}/proposal-runs/", {}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    run_proposals(response.json()["id"])

    _assert_failed(response.json()["id"], slide_copy, message, hint, client)


@pytest.fixture
def model_version(tmp_path):
    weights = save_tiny_class_aware(tmp_path / "model" / "model.safetensors")
    snapshot = TrainingSnapshot.objects.create(
        validation_fraction=0.2, class_names=list(TINY_CLASS_NAMES)
    )
    return ModelVersion.objects.create(
        name="model-a", status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=list(TINY_CLASS_NAMES), weights_path=str(weights),
        weights_sha256=file_sha256(weights),
    )


@pytest.mark.parametrize(("damage", "message", "hint"), DAMAGES)
def test_segmentation_run_on_damaged_slide(
    damage, message, hint, slide_copy, model_version, client_for, fast_segmentation
):
    client = client_for("annotator")
    damage(slide_copy)

    response = client.post(
        f"/api/slides/{slide_copy.pk}/proposal-runs/", {"model_version": model_version.pk},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    run_segmentation(response.json()["id"])

    _assert_failed(response.json()["id"], slide_copy, message, hint, client)
    assert ProposalRun.objects.get().predictions_file == ""


def test_propose_command_on_damaged_slide(slide_copy, fast_proposals):
    _cut_in_half(slide_copy)

    result = run_command("propose", str(slide_copy.pk))

    run = ProposalRun.objects.get()
    assert result.exit_code == 1
    assert result.stderr == f"CommandError: Proposal run {run.pk} failed: {run.message}\n"
    assert run.message.startswith(f"{slide_copy.file_path}: {CUT_MESSAGE}")


def test_propose_on_glass_skips_every_tile(inputs_dir, fast_proposals):
    slide = import_slide(slide_files.blank_tiff(inputs_dir))

    result = run_command("propose", str(slide.pk))

    run = ProposalRun.objects.get()
    assert result.exit_code == 0, result.stderr
    assert run.status == ProposalRun.Status.SUCCEEDED
    assert run.counts["tiles_total"] == 1
    assert run.counts["tiles_skipped_no_tissue"] == 1
    assert run.counts["masks_generated"] == 0
    assert run.counts["stored"] == 0


def _assert_every_mask_counted(counts):
    outcomes = sum(counts[key] for key in MASK_OUTCOMES)
    assert counts["masks_generated"] > 0
    assert counts["masks_generated"] == outcomes


def test_propose_on_slide_smaller_than_tile(inputs_dir, fast_proposals):
    slide = import_slide(slide_files.small_tiff(inputs_dir))

    result = run_command("propose", str(slide.pk))

    run = ProposalRun.objects.get()
    assert result.exit_code == 0, result.stderr
    assert run.status == ProposalRun.Status.SUCCEEDED
    assert run.counts["tiles_total"] == 1
    assert run.counts["tiles_processed"] == 1
    _assert_every_mask_counted(run.counts)
    assert Instance.objects.filter(slide=slide).count() == run.counts["stored"]


def test_propose_on_transparent_border(inputs_dir, fast_proposals):
    slide = import_slide(slide_files.rgba_transparent_border_tiff(inputs_dir))

    result = run_command("propose", str(slide.pk))

    run = ProposalRun.objects.get()
    assert result.exit_code == 0, result.stderr
    assert run.status == ProposalRun.Status.SUCCEEDED
    assert run.counts["tiles_processed"] == 1
    _assert_every_mask_counted(run.counts)
    assert Instance.objects.filter(slide=slide).count() == run.counts["stored"]
