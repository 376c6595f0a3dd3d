"""Proposal runs through the service and the ``propose`` command, storage rules, viewport
queries and the GeoJSON export. The tiny SAM has random weights: these tests check the
pipeline's rules, not segmentation quality."""

import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from shapely.geometry import Polygon, box, shape

from apps.annotations import services
from apps.annotations.geometry import instance_row
from apps.annotations.journal import RunJournal
from apps.annotations.models import Instance, ProposalRun, ProposalRunTile
from apps.slides.models import Slide
from ml.errors import SettingsError

pytestmark = pytest.mark.django_db

TILE_AREA_LEVEL0 = 0.04 * (1024 * 1.0 / 0.499) ** 2  # 4% of a 1024 px tile at 1 µm/px


@pytest.fixture
def cmu_slide(shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    return Slide.objects.get()


def test_propose_command_stores_valid_proposals(cmu_slide, fast_proposals, capsys):
    call_command("propose", str(cmu_slide.pk))
    run = ProposalRun.objects.get()
    assert run.status == ProposalRun.Status.SUCCEEDED, run.message
    out = capsys.readouterr().out
    assert f"proposal run {run.pk} on slide {cmu_slide.pk}" in out
    counts = run.counts
    drops = sum(v for k, v in counts.items() if k.startswith("dropped_") and k != "dropped_overlaps_reviewed")
    assert counts["masks_generated"] == drops + counts["kept"]
    assert counts["stored"] == counts["kept"] > 0
    assert run.tiles_done == run.tiles_total == counts["tiles_total"]
    tissue = shape(cmu_slide.tissue_geojson)
    instances = list(Instance.objects.filter(slide=cmu_slide))
    assert len(instances) == counts["stored"]
    for instance in instances:
        polygon = shape(instance.geometry)
        assert polygon.is_valid
        assert box(0, 0, 2220, 2967).contains(polygon)
        assert polygon.area < TILE_AREA_LEVEL0
        assert instance.area_um2 >= 50.0
        assert polygon.intersection(tissue).area >= 0.5 * polygon.area - 1e-6
        assert (instance.x_min_level0, instance.y_min_level0,
                instance.x_max_level0, instance.y_max_level0) == pytest.approx(polygon.bounds, abs=0.01)
        assert instance.review_state == "pending"
        assert instance.source == "sam"


def test_sam_type_mismatch_fails_with_both_names(cmu_slide, fast_proposals):
    with pytest.raises(CommandError) as raised:
        call_command("propose", str(cmu_slide.pk), "--sam-type", "vit_l")
    run = ProposalRun.objects.get()
    assert run.status == ProposalRun.Status.FAILED
    assert "vit_l" in run.message
    assert run.message in str(raised.value)
    assert Instance.objects.count() == 0


def test_rerun_replaces_pending_and_keeps_reviewed(cmu_slide, fast_proposals):
    call_command("propose", str(cmu_slide.pk))
    first = ProposalRun.objects.get()
    kept_first = first.counts["stored"]
    # A reviewer accepts one proposal: the next run must neither delete it nor put a
    # duplicate on top of it.
    accepted = Instance.objects.filter(slide=cmu_slide).first()
    Instance.objects.filter(pk=accepted.pk).update(review_state="accepted")
    call_command("propose", str(cmu_slide.pk))
    second = ProposalRun.objects.exclude(pk=first.pk).get()
    assert second.counts["dropped_overlaps_reviewed"] >= 1
    assert Instance.objects.filter(proposal_run=first).count() == 1
    assert Instance.objects.get(pk=accepted.pk).review_state == "accepted"
    pending = Instance.objects.filter(slide=cmu_slide, review_state="pending")
    assert set(pending.values_list("proposal_run", flat=True)) == {second.pk}
    assert pending.count() == second.counts["stored"] == kept_first - second.counts["dropped_overlaps_reviewed"]


def test_executing_a_finished_run_changes_nothing(cmu_slide, fast_proposals):
    call_command("propose", str(cmu_slide.pk))
    run = ProposalRun.objects.get()
    before = sorted(Instance.objects.values_list("id", flat=True))
    again = services.execute_proposal_run(run.pk, owner="second-delivery")
    assert again.status == ProposalRun.Status.SUCCEEDED
    assert sorted(Instance.objects.values_list("id", flat=True)) == before


def test_run_held_by_another_worker_is_skipped(cmu_slide, fast_proposals):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    assert services._acquire_lease(run.pk, "worker-a")
    assert services.execute_proposal_run(run.pk, owner="worker-b") is None
    assert ProposalRun.objects.get(pk=run.pk).status == ProposalRun.Status.QUEUED


class WorkerCrash(BaseException):
    """Stands in for a killed worker: no ``except Exception`` handler catches it."""


def _recording_progress(monkeypatch) -> list[int]:
    progress = []
    original = services._progress_reporter

    def recording_reporter(run, owner):
        report = original(run, owner)

        def wrapped(tiles_done, tiles_total):
            progress.append(tiles_done)
            report(tiles_done, tiles_total)

        return wrapped

    monkeypatch.setattr(services, "_progress_reporter", recording_reporter)
    return progress


def _expire_lease(run_id: int) -> None:
    ProposalRun.objects.filter(pk=run_id).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def _stored_outlines(run) -> list:
    return sorted(
        (row.x_min_level0, row.y_min_level0, json.dumps(row.geometry, sort_keys=True))
        for row in Instance.objects.filter(proposal_run=run)
    )


def test_taken_over_run_resumes_from_journal(cmu_slide, fast_proposals, monkeypatch):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    original_record = RunJournal.record_tile

    def record_then_crash(journal, tile_index, payload):
        original_record(journal, tile_index, payload)
        if ProposalRunTile.objects.filter(run_id=journal.run_id).count() == 2:
            raise WorkerCrash

    monkeypatch.setattr(RunJournal, "record_tile", record_then_crash)
    with pytest.raises(WorkerCrash):
        services.execute_proposal_run(run.pk, owner="worker-a")
    monkeypatch.setattr(RunJournal, "record_tile", original_record)
    crashed = ProposalRun.objects.get(pk=run.pk)
    journaled = set(ProposalRunTile.objects.filter(run=run).values_list("tile_index", flat=True))
    assert crashed.status == ProposalRun.Status.RUNNING
    assert len(journaled) == 2

    _expire_lease(run.pk)
    progress = _recording_progress(monkeypatch)
    taken_over = services.execute_proposal_run(run.pk, owner="worker-b")

    assert taken_over.status == ProposalRun.Status.SUCCEEDED, taken_over.message
    assert progress[0] == 2  # the journaled tiles, reported at once
    assert taken_over.tiles_done == taken_over.tiles_total == progress[-1] == 4
    assert taken_over.lease_owner == ""
    assert taken_over.started_at == crashed.started_at
    assert ProposalRunTile.objects.filter(run=run).count() == 0
    resumed_outlines = _stored_outlines(run)
    resumed_counts = taken_over.counts

    # The same run without interruption stores the same outlines and counts.
    uninterrupted = services.start_proposal_run(cmu_slide, enqueue=False)
    services.execute_proposal_run(uninterrupted.pk, owner="worker-c")
    uninterrupted.refresh_from_db()
    assert uninterrupted.status == ProposalRun.Status.SUCCEEDED
    assert uninterrupted.counts == resumed_counts
    assert len(resumed_outlines) > 0
    assert _stored_outlines(uninterrupted) == resumed_outlines


def test_journal_of_other_weights_is_dropped(cmu_slide, fast_proposals, monkeypatch):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    ProposalRunTile.objects.create(
        run=run, tile_index=0, weights_sha256="0" * 64,
        payload={"instances": [], "counts": {"masks_generated": 999}},
    )
    recorded = []
    original_record = RunJournal.record_tile

    def recording(journal, tile_index, payload):
        recorded.append(tile_index)
        original_record(journal, tile_index, payload)

    monkeypatch.setattr(RunJournal, "record_tile", recording)
    finished = services.execute_proposal_run(run.pk, owner="worker-a")

    assert finished.status == ProposalRun.Status.SUCCEEDED
    assert sorted(recorded) == [0, 1, 2, 3]
    assert finished.counts["masks_generated"] < 999
    assert ProposalRunTile.objects.filter(run=run).count() == 0


def test_taken_over_run_stores_nothing(cmu_slide, fast_proposals, monkeypatch):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    original_record = RunJournal.record_tile

    def record_then_lose_lease(journal, tile_index, payload):
        original_record(journal, tile_index, payload)
        ProposalRun.objects.filter(pk=journal.run_id).update(lease_owner="worker-b")

    monkeypatch.setattr(RunJournal, "record_tile", record_then_lose_lease)
    stopped = services.execute_proposal_run(run.pk, owner="worker-a")

    row = ProposalRun.objects.get(pk=run.pk)
    assert stopped.pk == run.pk
    assert row.status == ProposalRun.Status.RUNNING
    assert row.lease_owner == "worker-b"
    assert row.message == ""
    assert Instance.objects.filter(slide=cmu_slide).count() == 0


# Committed statements, as in a worker: the journal row of the deleted run fails at once.
@pytest.mark.django_db(transaction=True)
def test_run_deleted_while_running_stops(cmu_slide, fast_proposals, monkeypatch, caplog):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    original_record = RunJournal.record_tile

    def record_then_delete_run(journal, tile_index, payload):
        original_record(journal, tile_index, payload)
        ProposalRun.objects.filter(pk=journal.run_id).delete()

    monkeypatch.setattr(RunJournal, "record_tile", record_then_delete_run)
    services.execute_proposal_run(run.pk, owner="worker-a")

    assert f"Run {run.pk} was deleted while it ran, so it stopped (IntegrityError)" in caplog.text
    assert ProposalRun.objects.count() == 0
    assert Instance.objects.filter(slide=cmu_slide).count() == 0


def test_task_of_deleted_run_is_not_retried(cmu_slide):
    from apps.annotations.tasks import run_proposals

    run = services.start_proposal_run(cmu_slide, enqueue=False)
    run_id = run.pk
    run.delete()

    # Called in this process: a retry would raise celery.exceptions.Retry.
    assert run_proposals(run_id) is None


@pytest.mark.django_db(transaction=True)
def test_slow_tile_keeps_lease(cmu_slide, settings):
    from nephroweb.leases import acquire_lease

    settings.NEPHROWEB_TASK_LEASE_S = 3  # renewed every second by the worker's thread
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    taken_by_other_worker = []

    def slow_tile(run, report):
        time.sleep(4.5)  # longer than the lease, with no progress report in between
        taken_by_other_worker.append(acquire_lease(ProposalRun, run.pk, "worker-b"))
        raise SettingsError("stopped by the test")

    services.execute_run(run.pk, owner="worker-a", body=slow_tile)

    assert taken_by_other_worker == [False]
    assert ProposalRun.objects.get(pk=run.pk).message == "stopped by the test"


def test_failed_run_clears_journal(cmu_slide, fast_proposals, monkeypatch):
    run = services.start_proposal_run(cmu_slide, enqueue=False)

    def fail_in_merge(instances):
        raise SettingsError("merge failed on purpose")

    monkeypatch.setattr("ml.proposals.merge_instances", fail_in_merge)
    failed = services.execute_proposal_run(run.pk, owner="worker-a")

    assert failed.status == ProposalRun.Status.FAILED
    assert failed.message == "merge failed on purpose"
    assert ProposalRunTile.objects.filter(run=run).count() == 0


def test_missing_checkpoint_fails_with_supply_hint(cmu_slide, settings, tmp_path):
    import socket

    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings.NEPHROWEB_SAM_CHECKPOINT = ""
    settings.NEPHROWEB_CHECKPOINT_CACHE = tmp_path / "cache"
    settings.NEPHROWEB_SAM_DOWNLOAD_BASE_URL = f"http://127.0.0.1:{closed_port}/sam"
    with pytest.raises(CommandError) as raised:
        call_command("propose", str(cmu_slide.pk))
    run = ProposalRun.objects.get()
    assert run.status == ProposalRun.Status.FAILED
    assert "NEPHROWEB_SAM_CHECKPOINT" in run.message
    assert "sam_vit_b_01ec64.pth" in run.message
    assert run.message in str(raised.value)
    assert list((tmp_path / "cache").glob("*")) == [] or not (tmp_path / "cache").exists()


def test_bad_setting_rejected_with_field_name(cmu_slide, client_for):
    response = client_for("annotator").post(
        f"/api/slides/{cmu_slide.pk}/proposal-runs/",
        {"settings": {"points_per_side": -3}},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "points_per_side" in response.json()["detail"]
    assert ProposalRun.objects.count() == 0


def _square(slide, x, y, size, **fields):
    polygon = Polygon([(x, y), (x + size, y), (x + size, y + size), (x, y + size)])
    return instance_row(polygon, slide=slide, mpp=slide.mpp, source=Instance.Source.DRAWN, **fields)


def test_viewport_returns_polygons_crossing_the_view(cmu_slide, client_for):
    Instance.objects.bulk_create([
        _square(cmu_slide, 100, 100, 50),       # inside the view
        _square(cmu_slide, 380, 380, 100),      # starts before the view, crosses into it
        _square(cmu_slide, 1500, 1500, 40),     # outside
        _square(cmu_slide, 420, 420, 30, review_state="rejected"),  # rejected: hidden
    ])
    client = client_for("annotator")
    body = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox=90,90,400,400").json()
    corners = sorted(f["geometry"]["coordinates"][0][0][0] for f in body["features"])
    assert corners == [100, 380]
    assert body["truncated"] is False
    limited = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox=0,0,3000,3000&limit=1").json()
    assert len(limited["features"]) == 1
    assert limited["truncated"] is True
    bad = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox=5,5,1")
    assert bad.status_code == 400
    assert "bbox" in bad.json()


def test_geojson_export_is_qupath_compatible(cmu_slide, client_for):
    ring = [(0, 0), (200, 0), (200, 200), (0, 200), (0, 0)]
    hole = [(50, 50), (150, 50), (150, 150), (50, 150), (50, 50)]
    with_hole = instance_row(Polygon(ring, [hole]), slide=cmu_slide, mpp=cmu_slide.mpp,
                             source=Instance.Source.DRAWN, class_name="glomerulus",
                             review_state="accepted")
    proposal = _square(cmu_slide, 500, 500, 60, predicted_iou=0.91, stability_score=0.97)
    Instance.objects.bulk_create([with_hole, proposal])
    response = client_for("pathologist").get(f"/api/slides/{cmu_slide.pk}/export.geojson")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    collection = json.loads(response.content, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert collection["type"] == "FeatureCollection"
    features = {f["properties"]["nephroweb"]["instance_id"]: f for f in collection["features"]}
    glomerulus = features[with_hole.pk]
    assert glomerulus["properties"]["objectType"] == "annotation"
    assert glomerulus["properties"]["classification"] == {"name": "glomerulus", "color": [255, 0, 255]}
    polygon = shape(glomerulus["geometry"])
    assert polygon.area == pytest.approx(200 * 200 - 100 * 100)
    assert len(polygon.interiors) == 1
    area_um2 = glomerulus["properties"]["measurements"]["Area µm^2"]
    assert area_um2 == pytest.approx(30000 * 0.499**2)
    unlabeled = [f for f in collection["features"] if "classification" not in f["properties"]]
    assert len(unlabeled) == 1
    assert unlabeled[0]["properties"]["measurements"]["SAM predicted IoU"] == pytest.approx(0.91)


# ---------------------------------------------------------------------------- cancel


def _pending_sam_proposals(slide) -> list[int]:
    """Store two pending SAM proposals, as an earlier run would, and return their ids."""
    rows = [
        instance_row(box(x, 100, x + 40, 140), slide=slide, mpp=slide.mpp,
                     source=Instance.Source.SAM, predicted_iou=0.9, stability_score=0.95)
        for x in (100, 300)
    ]
    return [row.pk for row in Instance.objects.bulk_create(rows)]


def _cancel_audit_rows():
    from apps.accounts.models import AuditEvent

    return list(AuditEvent.objects.filter(action="cancel").order_by("id").values(
        "username", "target_type", "target_id", "slide_id", "detail"
    ))


def test_queued_run_cancelled_at_once(cmu_slide, make_user, client):
    anna = make_user("annotator", username="anna")
    client.force_login(anna)
    run = services.start_proposal_run(cmu_slide, enqueue=False)

    response = client.post(f"/api/proposal-runs/{run.pk}/cancel/")

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"], body["cancel_requested"]) == (run.pk, "cancelled", True)
    assert body["message"] == "Cancelled by anna before it started."
    row = ProposalRun.objects.get(pk=run.pk)
    assert row.status == ProposalRun.Status.CANCELLED
    assert row.cancel_requested is True
    assert row.cancelled_by == anna
    assert row.message == "Cancelled by anna before it started."
    assert row.finished_at is not None
    assert row.started_at is None
    assert (row.tiles_done, row.tiles_total) == (0, 0)
    assert _cancel_audit_rows() == [{
        "username": "anna", "target_type": "proposal_run", "target_id": run.pk,
        "slide_id": cmu_slide.pk, "detail": {"status": "cancelled"},
    }]


def test_task_of_cancelled_run_does_nothing(cmu_slide, fast_proposals):
    previous = _pending_sam_proposals(cmu_slide)
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    services.cancel_run(run, user=None)
    before = ProposalRun.objects.filter(pk=run.pk).values().get()

    again = services.execute_proposal_run(run.pk, owner="late-delivery")

    assert again.status == ProposalRun.Status.CANCELLED
    assert again.message == "Cancelled before it started."
    assert ProposalRun.objects.filter(pk=run.pk).values().get() == before
    assert sorted(Instance.objects.values_list("id", flat=True)) == previous


def test_running_run_stops_at_next_tile(cmu_slide, fast_proposals, make_user, monkeypatch):
    anna = make_user("annotator", username="anna")
    previous = _pending_sam_proposals(cmu_slide)
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    original_record = RunJournal.record_tile
    recorded = []

    def record_then_cancel(journal, tile_index, payload):
        original_record(journal, tile_index, payload)
        recorded.append(tile_index)
        if len(recorded) == 1:
            services.cancel_run(ProposalRun.objects.get(pk=journal.run_id), user=anna)

    monkeypatch.setattr(RunJournal, "record_tile", record_then_cancel)
    stopped = services.execute_proposal_run(run.pk, owner="worker-a")

    assert len(recorded) == 1
    assert stopped.status == ProposalRun.Status.CANCELLED
    assert stopped.message == "Cancelled by anna after 1 of 4 tiles."
    assert (stopped.tiles_done, stopped.tiles_total) == (1, 4)
    assert stopped.finished_at is not None
    assert stopped.counts == {}
    assert (stopped.lease_owner, stopped.lease_expires_at) == ("", None)
    assert ProposalRunTile.objects.filter(run=run).count() == 0
    assert Instance.objects.filter(proposal_run=run).count() == 0
    pending = Instance.objects.filter(slide=cmu_slide, review_state="pending")
    assert sorted(pending.values_list("id", flat=True)) == previous
    assert [row["detail"] for row in _cancel_audit_rows()] == [{"status": "running"}]


def test_cancel_before_store_wins(cmu_slide, fast_proposals, monkeypatch):
    import ml.proposals

    previous = _pending_sam_proposals(cmu_slide)
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    original_merge = ml.proposals.merge_instances

    # After the last tile, before the result is stored: no progress report follows.
    def cancel_then_merge(instances):
        services.cancel_run(ProposalRun.objects.get(pk=run.pk), user=None)
        return original_merge(instances)

    monkeypatch.setattr(ml.proposals, "merge_instances", cancel_then_merge)
    stopped = services.execute_proposal_run(run.pk, owner="worker-a")

    assert stopped.status == ProposalRun.Status.CANCELLED
    assert stopped.message == "Cancelled after 4 of 4 tiles."
    assert stopped.counts == {}
    assert ProposalRunTile.objects.filter(run=run).count() == 0
    assert sorted(Instance.objects.values_list("id", flat=True)) == previous


def test_cancel_of_run_whose_worker_died(cmu_slide):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    ProposalRunTile.objects.create(run=run, tile_index=0, payload={"instances": [], "counts": {}})
    ProposalRun.objects.filter(pk=run.pk).update(
        status=ProposalRun.Status.RUNNING, started_at=timezone.now(), tiles_done=2,
        tiles_total=5, lease_owner="dead-worker",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )

    cancelled = services.cancel_run(run, user=None)

    row = ProposalRun.objects.get(pk=run.pk)
    assert cancelled.status == row.status == ProposalRun.Status.CANCELLED
    assert row.message == "Cancelled after 2 of 5 tiles."
    assert row.finished_at is not None
    assert ProposalRunTile.objects.filter(run=run).count() == 0


def test_taken_over_run_with_cancel_request_stops(cmu_slide, fast_proposals):
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    ProposalRunTile.objects.create(run=run, tile_index=0, payload={"instances": [], "counts": {}})
    # The request reached a running worker that died before its next tile.
    ProposalRun.objects.filter(pk=run.pk).update(
        status=ProposalRun.Status.RUNNING, cancel_requested=True, tiles_done=1, tiles_total=4,
    )

    stopped = services.execute_proposal_run(run.pk, owner="worker-b")

    assert stopped.status == ProposalRun.Status.CANCELLED
    assert stopped.message == "Cancelled after 1 of 4 tiles."
    assert stopped.lease_owner == ""
    assert ProposalRunTile.objects.filter(run=run).count() == 0
    assert Instance.objects.count() == 0


def test_second_cancel_keeps_first_user(cmu_slide, make_user):
    anna, ben = make_user("annotator", username="anna"), make_user("pathologist", username="ben")
    run = services.start_proposal_run(cmu_slide, enqueue=False)
    ProposalRun.objects.filter(pk=run.pk).update(
        status=ProposalRun.Status.RUNNING, started_at=timezone.now(), tiles_done=1,
        tiles_total=4, lease_owner="worker-a",
        lease_expires_at=timezone.now() + timedelta(minutes=5),
    )

    services.cancel_run(run, user=anna)
    services.cancel_run(run, user=ben)

    row = ProposalRun.objects.get(pk=run.pk)
    assert (row.status, row.cancel_requested, row.cancelled_by) == ("running", True, anna)
    assert [row["username"] for row in _cancel_audit_rows()] == ["anna", "ben"]


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_of_finished_run_is_409(cmu_slide, client_for, status):
    run = ProposalRun.objects.create(
        slide=cmu_slide, sam_type="vit_b", status=status, finished_at=timezone.now(),
        message="as it was",
    )
    before = ProposalRun.objects.filter(pk=run.pk).values().get()

    response = client_for("annotator").post(f"/api/proposal-runs/{run.pk}/cancel/")

    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"Proposal run {run.pk} has already finished ({status}). "
        "Only queued or running runs can be cancelled."
    )
    assert ProposalRun.objects.filter(pk=run.pk).values().get() == before
    assert _cancel_audit_rows() == []


def test_cancel_of_missing_run_is_404(client_for):
    response = client_for("annotator").post("/api/proposal-runs/999999/cancel/")

    assert response.status_code == 404
