"""The model's life on real kidney tissue, through a real Celery worker on Redis and
PostgreSQL: a mosaic of KI PAS tiles is imported with its annotations, a snapshot of
them trains a class-aware model version (a few steps, tiny SAM), and that version
segments the slide into the review queue without touching the reviewed annotations.

The base is the tiny random SAM and training takes a few steps, so this checks that every
stage hands the right data to the next, not how well the model segments
(benchmarks/learn_ki.py measures that).
"""

import json
import time
from collections import Counter

import pytest
from django.core.management import call_command
from shapely.geometry import shape

from apps.annotations import segmentation
from apps.annotations.models import Instance, ProposalRun
from apps.review import selectors
from apps.slides.models import Slide
from apps.training import services as training, snapshots
from apps.training.models import ModelVersion
from ml.model_files import load_class_aware
from tests.processes import celery_worker, child_environment

from .conftest import FAST_SEGMENTATION

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

CROP_PX = 256  # the tiny SAM's input side, so crops reach the encoder unresized
# A few steps at a tiny learning rate keep the model near its random start, whose masks
# pass the filters; a model trained longer on this little data predicts empty masks.
TRAINING_CONFIG = {
    "epochs": 1, "batch_size": 16, "learning_rate": 1e-7, "warmup_steps": 0, "device": "cpu",
    "early_stopping_patience": None,
}
# Random masks are speckled, so the area floor is lowered for their largest parts to pass.
SEGMENTATION = {**FAST_SEGMENTATION, "points_per_side": 8, "min_area_um2": 10.0}


def wait_for(model, pk, final_states, timeout_s, log_path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = model.objects.get(pk=pk)
        if row.status in final_states:
            return row
        time.sleep(0.5)
    raise AssertionError(
        f"{model.__name__} {pk} still {row.status} after {timeout_s} s:\n"
        + log_path.read_text()[-3000:]
    )


def test_import_train_segment_review(ki_mosaic, redis_url, tiny_checkpoint, tmp_path, settings, make_user):
    settings.DATA_DIR = tmp_path
    settings.NEPHROWEB_SEGMENTATION = dict(SEGMENTATION)
    admin = make_user("admin")

    call_command("import_slides", str(ki_mosaic.path))
    slide = Slide.objects.get()
    assert (slide.width_px, slide.height_px, slide.mpp) == (832, 560, pytest.approx(1.0))
    call_command("import_annotations", str(slide.pk), str(ki_mosaic.geojson_path))
    reviewed = {
        row["id"]: row for row in Instance.objects.filter(slide=slide).values(
            "id", "review_state", "class_name", "geometry", "version")
    }
    assert Counter(row["class_name"] for row in reviewed.values()) == Counter(
        {"proximal tubule": 33, "distal tubule": 20, "vessel": 2}
    )
    assert {row["review_state"] for row in reviewed.values()} == {"accepted"}

    snapshot = snapshots.build_snapshot(admin, seed=0, validation_fraction=0.0)
    assert snapshot.items.count() == 55
    env = child_environment(
        tmp_path, REDIS_URL=redis_url, NEPHROWEB_SAM_CHECKPOINT=str(tiny_checkpoint),
        NEPHROWEB_SEGMENTATION_JSON=json.dumps(SEGMENTATION),
    )
    log_path = tmp_path / "worker.log"
    with celery_worker(env, log_path):
        version = training.start_training(
            snapshot, admin, config_overrides=TRAINING_CONFIG, mpp=1.0, crop_px=CROP_PX,
        )
        version = wait_for(ModelVersion, version.pk, training.FINAL_STATES, 300, log_path)
        assert version.status == ModelVersion.Status.SUCCEEDED, version.message
        run = segmentation.start_segmentation_run(slide, version, user=admin)
        run = wait_for(ProposalRun, run.pk, ("succeeded", "failed"), 300, log_path)
    assert run.status == ProposalRun.Status.SUCCEEDED, run.message

    # Training saw the snapshot's instances at the requested resolution.
    assert [row["epoch"] for row in version.metrics] == [1]
    model, metadata = load_class_aware(version.weights_path)
    assert metadata.data_snapshot_id == f"snapshot-{snapshot.pk}"
    assert (metadata.mpp, metadata.tile_px) == (1.0, CROP_PX)
    assert model.class_names == tuple(snapshot.class_names)

    # The segmentation ran at the model's resolution and tile size over the whole mosaic.
    assert run.model_version_id == version.pk
    assert (run.settings["mpp"], run.settings["tile_px"]) == (1.0, CROP_PX)
    assert run.tiles_done == run.tiles_total == run.counts["tiles_total"] > 1
    assert run.counts["kept"] == run.counts["stored"] + run.counts["dropped_overlaps_reviewed"]
    assert run.counts["stored"] > 0

    # Its proposals are in the queue, labelled with the version's classes ...
    stored = list(Instance.objects.filter(proposal_run=run))
    assert len(stored) == run.counts["stored"]
    queue = list(selectors.review_queue(slide=slide, limit=1000))
    assert {i.pk for i in queue} == {i.pk for i in stored}
    assert all(i.source == "model" and i.review_state == "pending" for i in queue)
    assert {i.class_name for i in queue} <= set(version.class_names) - {"background"}
    assert sum(run.counts["stored_per_class"].values()) == len(stored)

    # ... and no stored proposal sits on top of a reviewed annotation.
    outlines = [shape(row["geometry"]) for row in reviewed.values()]
    for proposal in stored:
        polygon = shape(proposal.geometry)
        for outline in outlines:
            smaller = min(polygon.area, outline.area)
            assert polygon.intersection(outline).area < 0.5 * smaller

    # The reviewed annotations are exactly as they were.
    after = {
        row["id"]: row for row in Instance.objects.filter(slide=slide, source="imported").values(
            "id", "review_state", "class_name", "geometry", "version")
    }
    assert after == reviewed
