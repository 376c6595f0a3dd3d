"""Draw with SAM through the API: a click becomes a stored, accepted instance, and the
second click in the same area reuses the cached embedding. The tiny SAM has random
weights, so this checks plumbing, not the outline's quality."""

import pytest
from django.core.management import call_command
from shapely.geometry import box, shape

from apps.annotations.models import Instance, InstanceEvent
from apps.review import prompting
from apps.slides.models import Slide

pytestmark = pytest.mark.django_db


@pytest.fixture
def prompt_ready(fast_proposals):
    prompting._segmenters.clear()
    yield fast_proposals
    prompting._segmenters.clear()


def test_click_stores_accepted_instance(prompt_ready, client_for, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    client = client_for("annotator")
    response = client.post(f"/api/slides/{slide.pk}/prompt/",
                           {"point_level0": [1100, 1500], "class_name": "glomerulus"},
                           content_type="application/json")
    if response.status_code == 422:
        pytest.fail(f"tiny SAM found nothing at the click: {response.json()['detail']}")
    assert response.status_code == 201, response.content
    feature = response.json()
    row = Instance.objects.get(pk=feature["id"])
    assert (row.source, row.review_state, row.class_name) == ("drawn", "accepted", "glomerulus")
    polygon = shape(row.geometry)
    assert polygon.is_valid
    assert box(0, 0, 2220, 2967).contains(polygon)
    assert row.predicted_iou == pytest.approx(feature["properties"]["predicted_iou"])
    assert InstanceEvent.objects.get().action == "draw"
    runs_before = prompting.segmenter().encoder_runs
    second = client.post(f"/api/slides/{slide.pk}/prompt/",
                         {"point_level0": [1120, 1520], "class_name": "vessel"},
                         content_type="application/json")
    assert second.status_code in (201, 422)
    assert prompting.segmenter().encoder_runs == runs_before


def test_prompt_needs_exactly_one_prompt(prompt_ready, client_for, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    client = client_for("annotator")
    both = client.post(f"/api/slides/{slide.pk}/prompt/",
                       {"point_level0": [5, 5], "box_level0": [0, 0, 9, 9], "class_name": "vessel"},
                       content_type="application/json")
    assert both.status_code == 400
    assert "exactly one" in both.json()["detail"]
    outside = client.post(f"/api/slides/{slide.pk}/prompt/",
                          {"point_level0": [5000, 5], "class_name": "vessel"},
                          content_type="application/json")
    assert outside.status_code == 400
    assert "5000" in outside.json()["detail"]
    assert Instance.objects.count() == 0
