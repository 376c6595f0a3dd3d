"""Training and proposal runs survive a real Celery worker killed with SIGKILL mid-task.

Worker A works until the first epoch checkpoint (training) or a few journaled tiles
(proposals) are written and is then killed without warning. The task was acknowledged
late, so Redis delivers it again once its visibility timeout has passed. Worker B takes
the run over when A's lease has expired, resumes from the last epoch checkpoint or the
tile journal and finishes. The result must equal an uninterrupted run.
"""

import json
import os
import re
import signal
import time

import pytest
import torch
from django.core.management import call_command

from apps.annotations import services as proposal_services
from apps.annotations.models import Instance, ProposalRun, ProposalRunTile
from apps.slides.models import Slide
from apps.training import services, snapshots
from apps.training.models import ModelVersion
from tests.processes import celery_worker, child_environment
from tests.web.test_training import CROP_PX, FAST_CONFIG, WORKING_MPP, _instance, _slide

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

EPOCHS = 30
FINISHED = {ModelVersion.Status.SUCCEEDED, ModelVersion.Status.FAILED, ModelVersion.Status.CANCELLED}
RUN_FINISHED = {
    ProposalRun.Status.SUCCEEDED, ProposalRun.Status.FAILED, ProposalRun.Status.CANCELLED
}
# Short enough for a test; a deployment keeps the defaults (docs/configuration.md).
VISIBILITY_TIMEOUT_S = "4"
LEASE_S = "6"


def _wait_for(condition, timeout_s: float, description: str, log_path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(
        f"Timed out after {timeout_s} s waiting for {description}; see {log_path}"
    )


def _finished_and_released(row, finished_states):
    """Return ``row`` once it is finished and its worker released the lease, else None.

    The worker commits the final status first and releases the lease right after, so a
    poll in between can read a finished row that is still leased.
    """
    if row.status in finished_states and row.lease_owner == "":
        return row
    return None


@pytest.fixture
def snapshot(shared_data):
    slide_a = _slide(shared_data, "a", "P1")
    slide_b = _slide(shared_data, "b", "P2")
    _instance(slide_a, (300, 300, 340, 340), "glomerulus")
    _instance(slide_a, (345, 300, 385, 340), "vessel")
    _instance(slide_b, (1000, 1000, 1050, 1050), "proximal tubule")
    _instance(slide_b, (1200, 1200, 1240, 1240), "distal tubule")
    return snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)


def _start(snapshot, *, enqueue: bool) -> ModelVersion:
    return services.start_training(
        snapshot, None,
        config_overrides={**FAST_CONFIG, "epochs": EPOCHS, "early_stopping_patience": None},
        mpp=WORKING_MPP, crop_px=CROP_PX, enqueue=enqueue,
    )


def _worker_environment(settings, tmp_path, redis_url, tiny_checkpoint) -> dict:
    """Point this process and the workers at the same data folder and checkpoint."""
    settings.DATA_DIR = tmp_path
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    return child_environment(
        tmp_path,
        REDIS_URL=redis_url,
        NEPHROWEB_SAM_CHECKPOINT=str(tiny_checkpoint),
        NEPHROWEB_TASK_VISIBILITY_TIMEOUT_S=VISIBILITY_TIMEOUT_S,
        NEPHROWEB_TASK_LEASE_S=LEASE_S,
        NEPHROWEB_TORCH_THREADS="1",
    )


def test_training_resumes_after_worker_is_killed(
    snapshot, redis_url, tiny_checkpoint, tmp_path, settings
):
    env = _worker_environment(settings, tmp_path, redis_url, tiny_checkpoint)

    def state():
        return ModelVersion.objects.get(pk=version.pk)

    log_a, log_b = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
    with celery_worker(env, log_a) as worker_a:
        version = _start(snapshot, enqueue=True)  # commits, then enqueues on Redis
        _wait_for(lambda: len(state().metrics) >= 1, 300, "the first epoch", log_a)
        os.kill(worker_a.pid, signal.SIGKILL)
        worker_a.wait(timeout=10)

    killed = state()
    epochs_before_kill = [row["epoch"] for row in killed.metrics]
    assert killed.status == ModelVersion.Status.RUNNING
    assert killed.lease_owner != ""
    assert 1 <= len(epochs_before_kill) < EPOCHS

    with celery_worker(env, log_b):
        finished = _wait_for(
            lambda: _finished_and_released(state(), FINISHED),
            300, "worker B to finish the run and release its lease", log_b,
        )

    assert finished.status == ModelVersion.Status.SUCCEEDED, finished.message
    assert [row["epoch"] for row in finished.metrics] == list(range(1, EPOCHS + 1))
    # Worker B resumed after the epochs that worker A had checkpointed.
    resumed = re.search(r"for epochs (\d+)\.\.(\d+)", log_b.read_text(errors="replace"))
    assert resumed, "worker B logged no training start"
    assert int(resumed.group(1)) >= len(epochs_before_kill) + 1 >= 2
    assert int(resumed.group(2)) == EPOCHS
    # The epochs that worker A finished kept their metrics.
    assert finished.metrics[: len(epochs_before_kill)] == killed.metrics

    # The same version trained without interruption, in this process on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        uninterrupted = services.execute_training(_start(snapshot, enqueue=False).pk, owner="test")
    finally:
        torch.set_num_threads(threads)
    assert uninterrupted.status == ModelVersion.Status.SUCCEEDED, uninterrupted.message
    assert [row["epoch"] for row in uninterrupted.metrics] == list(range(1, EPOCHS + 1))
    for resumed_row, plain_row in zip(finished.metrics, uninterrupted.metrics, strict=True):
        assert resumed_row["train_loss"] == pytest.approx(plain_row["train_loss"], rel=1e-5), (
            resumed_row["epoch"], [r["train_loss"] for r in finished.metrics][:5],
            [r["train_loss"] for r in uninterrupted.metrics][:5], epochs_before_kill,
        )
    assert finished.weights_sha256 == uninterrupted.weights_sha256


# Small tiles, so the run has 45 tiles with tissue and the kill lands between two of them.
CRASH_PROPOSALS = {
    "mpp": 1.0, "tile_px": 384, "points_per_side": 4, "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0, "max_area_fraction": 0.2, "min_area_um2": 5.0,
}


def _outlines(run: ProposalRun) -> list:
    return sorted(
        json.dumps(geometry, sort_keys=True)
        for geometry in Instance.objects.filter(proposal_run=run).values_list("geometry", flat=True)
    )


def test_proposal_run_resumes_after_worker_is_killed(
    redis_url, tiny_checkpoint, tmp_path, settings, shared_data
):
    env = _worker_environment(settings, tmp_path, redis_url, tiny_checkpoint)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()

    def state():
        return ProposalRun.objects.get(pk=run.pk)

    def journaled():
        return ProposalRunTile.objects.filter(run_id=run.pk).count()

    log_a, log_b = tmp_path / "worker-a.log", tmp_path / "worker-b.log"
    with celery_worker(env, log_a) as worker_a:
        run = proposal_services.start_proposal_run(slide, overrides=CRASH_PROPOSALS)
        _wait_for(lambda: journaled() >= 3, 300, "three journaled tiles", log_a)
        os.kill(worker_a.pid, signal.SIGKILL)
        worker_a.wait(timeout=10)

    tiles_before_kill = journaled()
    killed = state()
    assert killed.status == ProposalRun.Status.RUNNING
    assert killed.lease_owner != ""
    assert Instance.objects.filter(proposal_run=run).count() == 0

    with celery_worker(env, log_b):
        finished = _wait_for(
            lambda: _finished_and_released(state(), RUN_FINISHED),
            300, "worker B to finish the run and release its lease", log_b,
        )

    assert finished.status == ProposalRun.Status.SUCCEEDED, finished.message
    assert journaled() == 0
    assert finished.tiles_done == finished.tiles_total == 45
    assert tiles_before_kill < 45
    # Worker B took at least the tiles journaled before the kill from the journal.
    resumed = re.search(r"Resuming .*: (\d+) of (\d+) tiles", log_b.read_text(errors="replace"))
    assert resumed, "worker B logged no resumption"
    assert int(resumed.group(1)) >= tiles_before_kill
    assert int(resumed.group(2)) == 45
    resumed_outlines = _outlines(finished)
    assert len(resumed_outlines) == finished.counts["stored"] > 0

    # The same run without interruption, in this process on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = proposal_services.start_proposal_run(
            slide, overrides=CRASH_PROPOSALS, enqueue=False
        )
        plain = proposal_services.execute_proposal_run(plain.pk, owner="test")
    finally:
        torch.set_num_threads(threads)
    assert plain.status == ProposalRun.Status.SUCCEEDED, plain.message
    assert plain.counts == finished.counts
    assert _outlines(plain) == resumed_outlines
