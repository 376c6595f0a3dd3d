"""The review load benchmark on a small scale: several reviewers, no errors, no lost edits."""

import pytest
from django.conf import settings

from apps.annotations.models import Instance
from apps.slides.services import import_slide
from benchmarks.api_latency import populate_instances
from benchmarks.review_load import lost_edits, measure, reviewer_cookies
from tests.processes import child_environment, web_server

KINDS = {"viewport", "tile", "instance", "accept", "relabel", "edit"}


@pytest.fixture
def cmu_slide(shared_data):
    return import_slide(shared_data / "wsi" / "cmu-1-small-region.svs")


def test_reviewers_lose_no_edit(transactional_db, cmu_slide, tmp_path):
    populate_instances(cmu_slide, 200)
    cookies = reviewer_cookies(3)
    env = child_environment(tmp_path, NEPHROWEB_SECRET_KEY=settings.SECRET_KEY,
                            NEPHROWEB_TILE_CACHE_URL="")
    env.pop("REDIS_URL", None)
    with web_server(env, tmp_path / "web.log") as base_url:
        result = measure(base_url, cmu_slide, cookies, seconds=8, shared_objects=2,
                         shared_share=0.5, think_s=0.05)

    assert set(result["kinds"]) == KINDS
    assert result["errors"] == 0, result["kinds"]
    assert result["lost_edits"] == 0
    assert result["versions_answered_twice"] == 0
    assert result["kinds"]["accept"]["requests"] > 0
    assert result["objects_changed"] > 0
    # Each change raised the row's version, so the newest response per object is the row.
    changed = Instance.objects.exclude(review_state="pending")
    assert changed.count() == result["objects_changed"]


def test_lost_edit_is_detected(db, cmu_slide):
    populate_instances(cmu_slide, 3)
    first, second, third = Instance.objects.order_by("id")
    # The row of ``first`` still has version 1, but a client got version 2 in a response.
    changes = [
        (first.pk, 2, "accepted", first.class_name),
        (second.pk, second.version, second.review_state, second.class_name),
        (third.pk, 5, "edited", "glomerulus"),
        (third.pk, 5, "edited", "glomerulus"),
    ]

    result = lost_edits(changes)

    assert result["objects_changed"] == 3
    assert result["lost_edits"] == 2
    assert result["lost_edit_ids"] == [first.pk, third.pk]
    assert result["versions_answered_twice"] == 1
