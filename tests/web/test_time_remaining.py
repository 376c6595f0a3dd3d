"""Time remaining of proposal runs and training, as the API and the websockets send it."""

from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as django_timezone

from apps.annotations.events import run_payload
from apps.annotations.models import ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot
from apps.training.services import version_payload, version_seconds_remaining
from nephroweb.time_remaining import estimate_seconds_remaining
from tests.conftest import create_slide_record

START = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
# With nearly every unit done, the seconds a slow test run adds before the request move
# the estimate by 1/1000 (runs) or 1/100 (versions) of them, so the rounded value is exact.
LONG_AGO = timedelta(seconds=3000)


@pytest.mark.parametrize(
    ("elapsed_s", "done", "total", "expected"),
    [
        (30, 10, 40, 90),
        (30, 1, 2, 30),
        (45, 3, 10, 105),
        (10, 0, 40, None),
        (10, 5, 0, None),
        (10, 40, 40, 0),
        (10, 41, 40, 0),
    ],
)
def test_estimate_from_rate(elapsed_s, done, total, expected):
    now = START + timedelta(seconds=elapsed_s)
    assert estimate_seconds_remaining(START, done, total, now) == expected


def test_estimate_without_start():
    assert estimate_seconds_remaining(None, 10, 40, START) is None


def test_estimate_clock_before_start():
    assert estimate_seconds_remaining(START, 10, 40, START - timedelta(seconds=5)) == 0


@pytest.fixture
def slide(db):
    return create_slide_record()


def make_run(slide, status=ProposalRun.Status.RUNNING, tiles_done=1000, tiles_total=1001):
    return ProposalRun.objects.create(
        slide=slide, status=status, sam_type="vit_b", tiles_done=tiles_done,
        tiles_total=tiles_total, started_at=django_timezone.now() - LONG_AGO,
    )


def test_running_run_api_and_event(slide, client_for):
    run = make_run(slide)
    body = client_for("pathologist").get(f"/api/proposal-runs/{run.pk}/").json()
    assert body["seconds_remaining"] == 3
    assert run_payload(run)["seconds_remaining"] == 3


def test_run_before_first_tile(slide):
    run = make_run(slide, tiles_done=0)
    assert run_payload(run)["seconds_remaining"] is None


@pytest.mark.parametrize(
    "status", [ProposalRun.Status.QUEUED, ProposalRun.Status.SUCCEEDED, ProposalRun.Status.FAILED]
)
def test_run_not_running_has_none(slide, status):
    assert run_payload(make_run(slide, status=status))["seconds_remaining"] is None


def make_version(status=ModelVersion.Status.RUNNING, epochs_done=100, epochs_total=101):
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2)
    return ModelVersion.objects.create(
        name="eta", status=status, snapshot=snapshot, mpp=1.0, crop_px=256,
        config={"epochs": epochs_total},
        metrics=[{"epoch": epoch, "train_loss": 1.0} for epoch in range(1, epochs_done + 1)],
        started_at=django_timezone.now() - LONG_AGO,
    )


def test_running_version_api_and_event(db, client_for):
    version = make_version()
    body = client_for("admin").get(f"/api/training/versions/{version.pk}/").json()
    assert body["seconds_remaining"] == 30
    assert version_payload(version)["seconds_remaining"] == 30


def test_version_estimate_at_given_time(db):
    version = make_version(epochs_done=10, epochs_total=40)
    now = version.started_at + timedelta(seconds=30)
    assert version_seconds_remaining(version, now) == 90


def test_version_before_first_epoch(db):
    assert version_payload(make_version(epochs_done=0))["seconds_remaining"] is None


@pytest.mark.parametrize(
    "status",
    [ModelVersion.Status.QUEUED, ModelVersion.Status.SUCCEEDED, ModelVersion.Status.CANCELLED],
)
def test_version_not_running_has_none(db, status):
    assert version_payload(make_version(status=status))["seconds_remaining"] is None
