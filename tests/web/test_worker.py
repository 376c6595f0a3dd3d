"""A proposal run end to end through a real Celery worker on Redis and PostgreSQL, with
progress arriving over the Channels Redis layer."""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management import call_command

from apps.annotations import services
from apps.annotations.models import Instance, ProposalRun
from apps.slides.consumers import slide_group
from apps.slides.models import Slide
from tests.processes import celery_worker, child_environment

from .conftest import FAST_PROPOSALS

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _collect_group_messages(slide_id: int, stop_when, timeout_s: float) -> list[dict]:
    """Listen on the slide's group (as the websocket consumer does) until ``stop_when``."""

    async def listen():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(slide_group(slide_id), channel)
        messages = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    message = await asyncio.wait_for(layer.receive(channel), timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                messages.append(message)
                if stop_when(message):
                    break
        finally:
            await layer.group_discard(slide_group(slide_id), channel)
        return messages

    return async_to_sync(listen)()


def test_worker_runs_proposals_and_streams_progress(shared_data, redis_url, tiny_checkpoint, tmp_path, settings):
    settings.NEPHROWEB_PROPOSALS = dict(FAST_PROPOSALS)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    env = child_environment(
        tmp_path,
        REDIS_URL=redis_url,
        NEPHROWEB_SAM_CHECKPOINT=str(tiny_checkpoint),
        NEPHROWEB_PROPOSALS_JSON=json.dumps(FAST_PROPOSALS),
    )
    with celery_worker(env, tmp_path / "worker.log"):
        run = services.start_proposal_run(slide)  # commits, then enqueues on Redis
        messages = _collect_group_messages(
            slide.pk,
            stop_when=lambda m: m["run"]["status"] in ("succeeded", "failed"),
            timeout_s=240,
        )
    run.refresh_from_db()
    log = (tmp_path / "worker.log").read_text()
    assert run.status == ProposalRun.Status.SUCCEEDED, run.message + "\n" + log[-3000:]
    assert f"Run {run.pk} stored" in log
    statuses = [m["run"]["status"] for m in messages]
    assert statuses[0] == "running"
    assert statuses[-1] == "succeeded"
    progress = [(m["run"]["tiles_done"], m["run"]["tiles_total"]) for m in messages]
    assert progress[-1][0] == progress[-1][1] == run.tiles_total > 0
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert Instance.objects.filter(proposal_run=run).count() == run.counts["stored"] > 0


def test_worker_skips_task_of_cancelled_run(shared_data, redis_url, tiny_checkpoint, tmp_path):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    run = services.start_proposal_run(Slide.objects.get())  # its task waits on Redis
    services.cancel_run(run, user=None)
    before = ProposalRun.objects.filter(pk=run.pk).values().get()
    env = child_environment(
        tmp_path, REDIS_URL=redis_url, NEPHROWEB_SAM_CHECKPOINT=str(tiny_checkpoint)
    )
    log_path = tmp_path / "worker.log"
    skipped = f"Run {run.pk} is already cancelled, so there is nothing to do"

    with celery_worker(env, log_path):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and skipped not in log_path.read_text():
            time.sleep(0.5)

    log = log_path.read_text()
    assert skipped in log, log[-3000:]
    assert "again at worker start" not in log
    assert ProposalRun.objects.filter(pk=run.pk).values().get() == before
    assert Instance.objects.count() == 0


def test_renewing_lease_extends_expiry(settings, shared_data):
    from nephroweb.leases import acquire_lease, renewing_lease

    settings.NEPHROWEB_TASK_LEASE_S = 3  # renewed every second
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    run = ProposalRun.objects.create(slide=Slide.objects.get(), sam_type="vit_b")
    assert acquire_lease(ProposalRun, run.pk, "worker-a")
    first_expiry = ProposalRun.objects.get(pk=run.pk).lease_expires_at

    with renewing_lease(ProposalRun, run.pk, "worker-a"):
        time.sleep(2.5)
        renewed_expiry = ProposalRun.objects.get(pk=run.pk).lease_expires_at

    assert renewed_expiry > first_expiry
    assert ProposalRun.objects.get(pk=run.pk).lease_owner == "worker-a"


def test_unfinished_tasks_lists_open_runs(shared_data):
    from apps.annotations.tasks import run_proposals
    from nephroweb.task_recovery import unfinished_tasks

    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    by_status = {
        status: ProposalRun.objects.create(slide=slide, sam_type="vit_b", status=status).pk
        for status in ProposalRun.Status.values
    }

    listed = unfinished_tasks()

    assert listed == [
        (run_proposals, by_status[ProposalRun.Status.QUEUED]),
        (run_proposals, by_status[ProposalRun.Status.RUNNING]),
    ]


# Redis, as deployed, and the demo's file-system broker (REDIS_URL empty).
@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_worker_start_runs_lost_task(
    broker, shared_data, redis_url, tiny_checkpoint, tmp_path, settings
):
    settings.NEPHROWEB_PROPOSALS = dict(FAST_PROPOSALS)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    # Committed but never enqueued: the broker lost its message.
    run = services.start_proposal_run(Slide.objects.get(), enqueue=False)
    env = child_environment(
        tmp_path,
        REDIS_URL=redis_url if broker == "redis" else "",
        NEPHROWEB_SAM_CHECKPOINT=str(tiny_checkpoint),
    )
    for folder in ("queue", "processed", "control"):  # as scripts/demo.sh makes them
        (tmp_path / "broker" / folder).mkdir(parents=True)
    log_path = tmp_path / "worker.log"

    with celery_worker(env, log_path):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if run.status in (ProposalRun.Status.SUCCEEDED, ProposalRun.Status.FAILED):
                break
            time.sleep(0.5)

    log = log_path.read_text()
    assert run.status == ProposalRun.Status.SUCCEEDED, run.message + "\n" + log[-3000:]
    requeued = f"again at worker start (1): apps.annotations.tasks.run_proposals({run.pk})"
    assert requeued in log
    assert Instance.objects.filter(proposal_run=run).count() == run.counts["stored"] > 0
