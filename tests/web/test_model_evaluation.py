"""Model evaluation: what is scored, the stored metrics, staleness, leakage, command, API, page.

Expected AP values follow COCO's 101-point interpolated precision by hand:

- Two truth glomeruli, one exact prediction and one miss: precision 1 up to recall 0.5
  and nothing beyond, so 51 of the 101 recall points have precision 1. AP = 51/101 at
  every IoU threshold, Dice/F1 = 2 TP / (2 TP + FP + FN) = 2/3.
- One truth vessel, a false positive scored 0.9 above the exact prediction scored 0.8:
  precision 0 then 1/2 at recall 1. The interpolated precision is 1/2 at every recall
  point, so AP = 0.5, and Dice/F1 = 2/3.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from shapely.geometry import box

from apps.analysis import evaluations
from apps.analysis.models import ModelEvaluation
from apps.analysis.predictions import Prediction, write_run_predictions
from apps.annotations.models import EvaluationRegion, Instance, ProposalRun
from apps.training.models import ModelVersion, SnapshotInstance, TrainingSnapshot
from tests.conftest import create_instance_record as add_instance
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db

VERSION_CLASSES = ["glomerulus", "vessel", "proximal tubule", "background"]
GLOMERULUS_AP = 51 / 101
VESSEL_AP = 0.5
REGION = box(0, 0, 2000, 2000)
GLOMERULUS_FOUND = box(100, 100, 300, 300)
GLOMERULUS_MISSED = box(600, 600, 800, 800)
GLOMERULUS_OUTSIDE = box(2500, 2500, 2700, 2700)
VESSEL = box(1000, 1000, 1100, 1100)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return settings


def make_version(name="model-a", status=ModelVersion.Status.SUCCEEDED):
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=VERSION_CLASSES)
    return ModelVersion.objects.create(
        name=name, status=status, snapshot=snapshot, mpp=1.0, crop_px=1024,
        class_names=VERSION_CLASSES,
    )


def add_run(slide, version, predictions):
    run = ProposalRun.objects.create(
        slide=slide, model_version=version, sam_type="class-aware",
        status=ProposalRun.Status.SUCCEEDED,
    )
    write_run_predictions(run, predictions)
    return run


def predicted(geometry, class_name, probability=0.9, predicted_iou=1.0):
    return Prediction(geometry, class_name, probability, predicted_iou)


def train_on(version, instance, split=SnapshotInstance.Split.TRAIN):
    bounds = instance.geometry
    SnapshotInstance.objects.create(
        snapshot=version.snapshot, instance=instance, instance_ref=instance.pk,
        version=instance.version, slide=instance.slide, patient="p1", split=split,
        class_name=instance.class_name, geometry=bounds, x_min_level0=instance.x_min_level0,
        y_min_level0=instance.y_min_level0, x_max_level0=instance.x_max_level0,
        y_max_level0=instance.y_max_level0,
    )


@pytest.fixture
def version():
    return make_version()


@pytest.fixture
def scene(version):
    """One slide: a region, reviewed truth inside and outside it, and a run's predictions."""
    slide = create_slide_record("biopsy-1")
    EvaluationRegion.objects.create(slide=slide, geometry=REGION.__geo_interface__)
    found = add_instance(slide, GLOMERULUS_FOUND, "glomerulus")
    missed = add_instance(slide, GLOMERULUS_MISSED, "glomerulus", Instance.ReviewState.EDITED)
    outside = add_instance(slide, GLOMERULUS_OUTSIDE, "glomerulus")
    vessel = add_instance(slide, VESSEL, "vessel")
    add_instance(slide, box(1200, 100, 1300, 200), "glomerulus", Instance.ReviewState.PENDING)
    add_instance(slide, box(1200, 300, 1300, 400), "glomerulus", Instance.ReviewState.REJECTED)
    add_instance(slide, box(0, 0, 1900, 1900), "cortex")
    run = add_run(slide, version, [
        predicted(GLOMERULUS_FOUND, "glomerulus", 0.9),
        predicted(box(1500, 1500, 1600, 1600), "vessel", 0.9),
        predicted(VESSEL, "vessel", 0.8),
        predicted(box(400, 1200, 500, 1300), "proximal tubule", 0.7),
        predicted(box(1400, 200, 1450, 250), "background", 0.99),
        predicted(box(3000, 3000, 3100, 3100), "glomerulus", 0.99),
    ])
    train_on(version, found)
    train_on(version, outside)
    train_on(version, vessel, SnapshotInstance.Split.VALIDATION)
    return {"slide": slide, "run": run, "missed": missed, "found": found}


def class_row(evaluation, name):
    return next(row for row in evaluation.metrics["classes"] if row["class_name"] == name)


def test_known_ap_per_class_and_mean(scene, version):
    evaluation = evaluations.run_evaluation(version)
    assert evaluation.status == ModelEvaluation.Status.SUCCEEDED, evaluation.message
    glomerulus = class_row(evaluation, "glomerulus")
    assert glomerulus["n_truth"] == 2
    assert glomerulus["n_pred"] == 1
    assert glomerulus["ap"] == pytest.approx(GLOMERULUS_AP)
    assert glomerulus["ap50"] == pytest.approx(GLOMERULUS_AP)
    assert glomerulus["ap75"] == pytest.approx(GLOMERULUS_AP)
    assert glomerulus["f1"] == pytest.approx(2 / 3)
    vessel = class_row(evaluation, "vessel")
    assert vessel["n_truth"] == 1
    assert vessel["n_pred"] == 2
    assert vessel["ap"] == pytest.approx(VESSEL_AP)
    assert vessel["ap50"] == pytest.approx(VESSEL_AP)
    assert vessel["f1"] == pytest.approx(2 / 3)
    mean = evaluation.metrics["mean"]
    assert mean["n_classes"] == 2
    assert mean["ap"] == pytest.approx((GLOMERULUS_AP + VESSEL_AP) / 2)
    assert mean["f1"] == pytest.approx(2 / 3)


def test_class_without_truth_is_none(scene, version):
    evaluation = evaluations.run_evaluation(version)
    tubule = class_row(evaluation, "proximal tubule")
    assert tubule["n_truth"] == 0
    assert tubule["n_pred"] == 1
    assert tubule["ap"] is None
    assert tubule["f1"] is None
    names = [row["class_name"] for row in evaluation.metrics["classes"]]
    assert names == ["glomerulus", "vessel", "proximal tubule"]


def test_slide_summary_counts_only_region_objects(scene, version):
    evaluation = evaluations.run_evaluation(version)
    assert evaluation.slides == [{
        "id": scene["slide"].pk, "name": "biopsy-1", "run_id": scene["run"].pk,
        "truth": 3, "predictions": 4, "trained_on": 1,
    }]


def test_leakage_warning_counts_training_truth(scene, version):
    evaluation = evaluations.run_evaluation(version)
    assert evaluations.leakage_counts(evaluation) == (1, 3)
    assert evaluations.leakage_warning(evaluation) == (
        "1 of 3 scored annotations were training data for this version; its scores "
        "overstate how it does on new slides."
    )


def test_review_change_marks_evaluation_stale(scene, version):
    evaluation = evaluations.run_evaluation(version)
    assert not evaluations.is_stale(evaluation)
    missed = scene["missed"]
    Instance.objects.filter(pk=missed.pk).update(
        review_state=Instance.ReviewState.REJECTED, version=missed.version + 1
    )
    assert evaluations.is_stale(evaluation)
    again = evaluations.run_evaluation(version)
    assert not evaluations.is_stale(again)
    assert class_row(again, "glomerulus")["ap"] == pytest.approx(1.0)


def test_execute_twice_keeps_one_row(scene, version):
    evaluation = evaluations.run_evaluation(version)
    repeated = evaluations.execute_evaluation(evaluation.pk)
    assert ModelEvaluation.objects.count() == 1
    assert repeated.finished_at == evaluation.finished_at
    assert repeated.metrics == evaluation.metrics


def test_queued_row_runs_through_execute(scene, version, django_capture_on_commit_callbacks):
    queued = evaluations.start_evaluation(version, user=None)
    assert queued.status == ModelEvaluation.Status.QUEUED
    finished = evaluations.execute_evaluation(queued.pk)
    assert finished.status == ModelEvaluation.Status.SUCCEEDED
    assert finished.metrics["mean"]["n_classes"] == 2


def test_evaluation_held_by_another_worker_is_skipped(scene, version):
    from nephroweb.leases import acquire_lease

    queued = evaluations.start_evaluation(version, user=None)
    assert acquire_lease(ModelEvaluation, queued.pk, "worker-a")

    assert evaluations.execute_evaluation(queued.pk, owner="worker-b") is None
    row = ModelEvaluation.objects.get(pk=queued.pk)
    assert row.status == ModelEvaluation.Status.QUEUED
    assert row.lease_owner == "worker-a"
    assert row.metrics == {}


def test_evaluation_releases_its_lease(scene, version):
    queued = evaluations.start_evaluation(version, user=None)

    finished = evaluations.execute_evaluation(queued.pk, owner="worker-a")

    row = ModelEvaluation.objects.get(pk=queued.pk)
    assert finished.status == ModelEvaluation.Status.SUCCEEDED
    assert row.lease_owner == ""
    assert row.lease_expires_at is None


def test_missing_predictions_file_fails_with_its_path(scene, version):
    path = scene["run"].predictions_file
    with open(path, "w") as stream:
        stream.write("{not json")
    evaluation = evaluations.run_evaluation(version)
    assert evaluation.status == ModelEvaluation.Status.FAILED
    assert path in evaluation.message
    assert "Segment the slide again" in evaluation.message


def test_version_not_succeeded_is_rejected():
    running = make_version("still-training", ModelVersion.Status.RUNNING)
    with pytest.raises(evaluations.ModelEvaluationError, match="status 'running'"):
        evaluations.run_evaluation(running)
    assert not ModelEvaluation.objects.exists()


def test_no_regions_says_to_mark_them(version):
    slide = create_slide_record("no-regions")
    add_run(slide, version, [predicted(GLOMERULUS_FOUND, "glomerulus")])
    with pytest.raises(evaluations.ModelEvaluationError, match="Mark evaluation regions"):
        evaluations.run_evaluation(version)


def test_unsegmented_regions_say_to_segment(version):
    slide = create_slide_record("not-segmented")
    EvaluationRegion.objects.create(slide=slide, geometry=REGION.__geo_interface__)
    with pytest.raises(evaluations.ModelEvaluationError, match="use --segment"):
        evaluations.run_evaluation(version)


# --- manage.py evaluate ----------------------------------------------------------------


def run_command(*args):
    from io import StringIO

    stdout, stderr = StringIO(), StringIO()
    call_command("evaluate", *args, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


def test_command_json_equals_stored_metrics(scene, version):
    stdout, stderr = run_command(version.name)
    report = json.loads(stdout)
    stored = ModelEvaluation.objects.get()
    assert report["evaluation"] == stored.pk
    assert report["metrics"] == stored.metrics
    assert report["slides"] == stored.slides
    assert report["leakage"] == {"trained_on": 1, "scored_truth": 3}
    assert report["metrics"]["coco_stats"]["AP"] == pytest.approx((GLOMERULUS_AP + VESSEL_AP) / 2)
    assert len(report["metrics"]["coco_stats"]) == 12
    assert "glomerulus: 2 truth, 1 predictions, AP 0.505, AP50 0.505, AP75 0.505" in stderr
    assert "proximal tubule: 0 truth, 1 predictions, AP n/a" in stderr
    assert "warning: 1 of 3 scored annotations were training data" in stderr


def test_command_accepts_version_id(scene, version):
    stdout, _ = run_command(str(version.pk))
    assert json.loads(stdout)["model_version"] == {"id": version.pk, "name": "model-a"}


@pytest.mark.parametrize(("setup", "argument", "message"), [
    ("none", "no-such-model", "Model version 'no-such-model' does not exist"),
    ("running", "still-training", "has status 'running'"),
    ("no-runs", "model-a", "Segment them with this version, or use --segment"),
])
def test_command_exit_status_two(version, setup, argument, message):
    if setup == "running":
        make_version("still-training", ModelVersion.Status.RUNNING)
    if setup == "no-runs":
        slide = create_slide_record("not-segmented")
        EvaluationRegion.objects.create(slide=slide, geometry=REGION.__geo_interface__)
    with pytest.raises(CommandError, match=message) as raised:
        run_command(argument)
    assert raised.value.returncode == 2
    assert not ModelEvaluation.objects.exists()


def test_command_process_exit_status(version, tmp_path):
    """A real process exits with status 2 and the message on stderr, nothing on stdout."""
    import os
    import subprocess
    import sys

    from tests.processes import child_environment

    # The child process can read the migrated test database but not this test's rows.
    env = child_environment(tmp_path)
    completed = subprocess.run(
        [sys.executable, "manage.py", "evaluate", "no-such-model"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert completed.returncode == 2
    assert "Model version 'no-such-model' does not exist" in completed.stderr
    assert completed.stdout == ""


# --- API and page ------------------------------------------------------------------------


def test_api_queues_evaluation(scene, version, client_for, django_capture_on_commit_callbacks):
    client = client_for("admin")
    response = client.post(
        f"/api/model-versions/{version.pk}/evaluations/", {}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert body["model_version"] == version.pk
    evaluations.execute_evaluation(body["id"])
    detail = client.get(f"/api/model-evaluations/{body['id']}/").json()
    assert detail["status"] == "succeeded"
    assert detail["stale"] is False
    assert body["stale"] is None
    assert detail["metrics"]["mean"]["ap"] == pytest.approx((GLOMERULUS_AP + VESSEL_AP) / 2)
    assert detail["leakage_warning"].startswith("1 of 3 scored annotations")


def test_api_explains_nothing_to_evaluate(version, client_for):
    response = client_for("admin").post(
        f"/api/model-versions/{version.pk}/evaluations/", {}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "Mark evaluation regions" in response.json()["detail"]
    assert not ModelEvaluation.objects.exists()


def test_page_shows_formatted_numbers(scene, version, client_for):
    evaluations.run_evaluation(version)
    TrainingSnapshot.objects.filter(pk=version.snapshot_id).update(
        class_counts={"glomerulus": 5, "vessel": 2, "proximal tubule": 0, "background": 3}
    )
    other = make_version("model-b")
    page = client_for("pathologist").get("/models/")
    assert page.status_code == 200
    html = page.content.decode()
    rows = page.context["rows"]
    assert [row["class_name"] for row in rows] == ["glomerulus", "vessel", "proximal tubule"]
    assert rows[0]["cells"] == ["0.505", "0.505", "0.505", "0.667", "2"]
    assert rows[1]["cells"] == ["0.500", "0.500", "0.500", "0.667", "1"]
    assert rows[2]["cells"] == ["n/a", "n/a", "n/a", "n/a", "0"]
    assert page.context["mean_row"] == ["0.502", "0.502", "0.502", "0.667", "2 classes"]
    assert "mean over classes with truth" in html
    glomerulus_cells = '<td class="version-start">0.505</td><td>0.505</td><td>0.505</td>'
    assert f'<th scope="row">glomerulus</th>{glomerulus_cells}' in html
    assert '<th scope="row">proximal tubule</th><td class="version-start">n/a</td>' in html
    assert "Dice/F1 @ IoU 0.5" in html
    assert "1 of 3 scored annotations were training data for this version" in html
    assert "Trained without a single example of: proximal tubule. Expect no skill" in html
    assert "Evaluate</button>" not in html
    assert [column["version"].pk for column in page.context["columns"]] == [version.pk]
    assert f'value="{other.pk}" id="choose-{other.pk}">' in html


def test_page_compares_chosen_versions(scene, version, client_for):
    evaluations.run_evaluation(version)
    other = make_version("model-b")
    add_run(scene["slide"], other, [predicted(GLOMERULUS_MISSED, "glomerulus", 0.6)])
    evaluations.run_evaluation(other)
    page = client_for("admin").get(f"/models/?versions={version.pk}&versions={other.pk}")
    rows = page.context["rows"]
    assert rows[0]["cells"] == ["0.505", "0.505", "0.505", "0.667", "2"] * 2
    assert rows[1]["cells"] == [
        "0.500", "0.500", "0.500", "0.667", "1", "0.000", "0.000", "0.000", "0.000", "1",
    ]
    assert "Evaluate</button>" in page.content.decode()


def test_page_marks_stale_and_queued(
    scene, version, client_for, django_capture_on_commit_callbacks
):
    evaluations.run_evaluation(version)
    Instance.objects.filter(pk=scene["missed"].pk).update(version=5)
    client = client_for("admin")
    response = client.post(f"/models/{version.pk}/evaluate/")
    assert response.status_code == 302
    assert response["Location"] == f"/models/?versions={version.pk}"
    html = client.get(response["Location"]).content.decode()
    assert "Stale: reviews, runs or regions changed" in html
    queued = ModelEvaluation.objects.filter(status="queued").get()
    assert f"Evaluation {queued.pk} is queued" in html
    assert "Evaluation of model-a queued." in html


def test_command_segment_runs_missing_slides(shared_data, tmp_path, settings):
    """--segment runs the tiny class-aware model on the region slide, then scores its file."""
    from apps.analysis.predictions import load_run_predictions
    from apps.slides.models import Slide
    from ml.checkpoints import file_sha256
    from tests.sam_factory import TINY_CLASS_NAMES, save_tiny_class_aware
    from tests.web.conftest import FAST_SEGMENTATION

    settings.NEPHROWEB_SEGMENTATION = dict(FAST_SEGMENTATION)
    weights = save_tiny_class_aware(tmp_path / "model.safetensors")
    snapshot = TrainingSnapshot.objects.create(
        validation_fraction=0.2, class_names=list(TINY_CLASS_NAMES)
    )
    tiny = ModelVersion.objects.create(
        name="tiny", status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=list(TINY_CLASS_NAMES), weights_path=str(weights),
        weights_sha256=file_sha256(weights),
    )
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    region = box(0, 0, slide.width_px, slide.height_px)
    EvaluationRegion.objects.create(slide=slide, geometry=region.__geo_interface__)
    add_instance(slide, box(500, 500, 700, 700), "glomerulus")

    stdout, stderr = run_command("tiny", "--segment")

    run = ProposalRun.objects.get(slide=slide, model_version=tiny)
    assert run.status == ProposalRun.Status.SUCCEEDED
    assert f"segmenting slide {slide.pk} (cmu-1-small-region) with tiny" in stderr
    scored = []
    for prediction in load_run_predictions(run):
        outline = prediction.geometry_level0
        inside = outline.intersection(region).area / outline.area >= 0.5
        if prediction.class_name != "background" and inside:
            scored.append(prediction)
    report = json.loads(stdout)
    assert report["slides"] == [{
        "id": slide.pk, "name": "cmu-1-small-region", "run_id": run.pk, "truth": 1,
        "predictions": len(scored), "trained_on": 0,
    }]
    glomerulus = report["metrics"]["classes"][0]
    assert glomerulus["class_name"] == "glomerulus"
    assert glomerulus["n_truth"] == 1
    assert glomerulus["n_pred"] == sum(p.class_name == "glomerulus" for p in scored)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_worker_computes_queued_evaluation(scene, version, redis_url, tmp_path):
    import time

    from tests.processes import celery_worker, child_environment

    env = child_environment(tmp_path, REDIS_URL=redis_url)
    with celery_worker(env, tmp_path / "worker.log"):
        queued = evaluations.start_evaluation(version, user=None)
        deadline = time.monotonic() + 120
        queued.refresh_from_db()
        while queued.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
            queued.refresh_from_db()
    log = (tmp_path / "worker.log").read_text()
    assert queued.status == ModelEvaluation.Status.SUCCEEDED, queued.message + "\n" + log[-3000:]
    assert class_row(queued, "glomerulus")["ap"] == pytest.approx(GLOMERULUS_AP)
    assert f"Evaluation {queued.pk} of model version {version.pk} succeeded" in log


def test_task_goes_to_default_queue():
    from nephroweb.celery import app

    route = app.amqp.router.route({}, "apps.analysis.tasks.run_evaluation")
    assert route["queue"].name == "default"


def test_many_correct_detections_keep_full_ap(version):
    """150 exact glomeruli on one slide: COCO's cap of 100 detections must not lower AP."""
    slide = create_slide_record("crowded", width_px=4000, height_px=4000)
    EvaluationRegion.objects.create(slide=slide, geometry=box(0, 0, 4000, 4000).__geo_interface__)
    outlines = []
    for i in range(150):
        x, y = 20 + 60 * (i % 15), 20 + 60 * (i // 15)
        outlines.append(box(x, y, x + 40, y + 40))
    for outline in outlines:
        add_instance(slide, outline, "glomerulus")
    add_run(slide, version, [
        predicted(outline, "glomerulus", 0.5 + i / 1000) for i, outline in enumerate(outlines)
    ])
    evaluation = evaluations.run_evaluation(version)
    glomerulus = class_row(evaluation, "glomerulus")
    assert glomerulus["n_truth"] == 150
    assert glomerulus["ap"] == pytest.approx(1.0)
    assert glomerulus["f1"] == pytest.approx(1.0)
    assert evaluation.metrics["max_detections_per_image"] == 150
