"""What a queued run waits for: the running and earlier queued tasks of the gpu queue."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.annotations.models import ProposalRun
from apps.annotations.run_queue import work_ahead
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db

T0 = timezone.now() - timedelta(hours=1)


def _at(row, minutes: int):
    """Set the row's created_at to T0 plus ``minutes`` (auto_now_add ignores the argument)."""
    type(row).objects.filter(pk=row.pk).update(created_at=T0 + timedelta(minutes=minutes))
    row.refresh_from_db()
    return row


@pytest.fixture
def slides():
    return create_slide_record("biopsy-a"), create_slide_record("biopsy-b")


def _run(slide, status, minutes, **fields):
    return _at(ProposalRun.objects.create(slide=slide, status=status, **fields), minutes)


def _version(name, status, minutes, **fields):
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=["glomerulus"])
    version = ModelVersion.objects.create(
        name=name, status=status, snapshot=snapshot, mpp=1.0, crop_px=256,
        class_names=["glomerulus"], **fields,
    )
    return _at(version, minutes)


def test_queued_run_lists_work_ahead(slides, client, make_user):
    slide_a, slide_b = slides
    training = _version(
        "demo-model", ModelVersion.Status.RUNNING, 0,
        config={"epochs": 30}, metrics=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
    )
    earlier = _run(slide_b, ProposalRun.Status.QUEUED, 5)
    run = _run(slide_a, ProposalRun.Status.QUEUED, 10)
    # Started later but running now (another worker took it first): still ahead.
    running = _run(slide_b, ProposalRun.Status.RUNNING, 12, tiles_done=7, tiles_total=45,
                   model_version=training)
    _run(slide_b, ProposalRun.Status.QUEUED, 15)
    _run(slide_b, ProposalRun.Status.SUCCEEDED, 1)
    _version("old-model", ModelVersion.Status.SUCCEEDED, 2)
    _version("later-model", ModelVersion.Status.QUEUED, 20)

    expected = [
        'training of model version "demo-model" (running, 3 of 30 epochs done)',
        f'SAM proposal run {earlier.pk} on slide "biopsy-b" (queued)',
        f'segmentation run {running.pk} with "demo-model" on slide "biopsy-b" '
        "(running, 7 of 45 tiles)",
    ]
    assert work_ahead(run) == expected
    client.force_login(make_user("annotator"))
    assert client.get(f"/api/proposal-runs/{run.pk}/").json()["work_ahead"] == expected


def test_long_queue_counts_the_rest(slides):
    slide_a, slide_b = slides
    earlier = [_run(slide_b, ProposalRun.Status.QUEUED, minutes) for minutes in range(5)]
    run = _run(slide_a, ProposalRun.Status.QUEUED, 10)

    assert work_ahead(run) == [
        f'SAM proposal run {other.pk} on slide "biopsy-b" (queued)' for other in earlier[:3]
    ] + ["2 more"]


def test_nothing_ahead_or_not_queued(slides):
    slide_a, _ = slides
    run = _run(slide_a, ProposalRun.Status.QUEUED, 10)
    running = _run(slide_a, ProposalRun.Status.RUNNING, 0)

    assert work_ahead(run) == [f'SAM proposal run {running.pk} on slide "biopsy-a" (running)']
    assert work_ahead(running) == []
    ProposalRun.objects.filter(pk=running.pk).update(status=ProposalRun.Status.FAILED)
    assert work_ahead(run) == []
