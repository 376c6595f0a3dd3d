"""The latency benchmark's core on a small scale, and the viewport query it measures."""

import json

import pytest
from django.conf import settings
from django.db import connection

from apps.annotations.models import Instance
from apps.slides.services import import_slide
from benchmarks.api_latency import (
    DOCS_BEGIN,
    DOCS_END,
    explain_viewport,
    measure_endpoints,
    populate_instances,
    tile_addresses,
    viewer_cookies,
    viewport_boxes,
    write_docs,
)
from tests.processes import child_environment, web_server

SUMMARY_FIELDS = {"requests", "errors", "p50_ms", "p95_ms", "max_ms", "mean_bytes"}
ENDPOINTS = {
    "viewport_whole_slide", "viewport_quarter", "viewport_screen", "viewport_typical",
    "tile_cold", "tile_cached",
}


@pytest.fixture
def cmu_slide(shared_data):
    return import_slide(shared_data / "wsi" / "cmu-1-small-region.svs")


def overlapping_ids(slide, x_min, y_min, x_max, y_max) -> set[int]:
    """Ids of the slide's instances whose stored box overlaps the given box, in Python."""
    return {
        row["id"]
        for row in Instance.objects.filter(slide=slide).values(
            "id", "x_min_level0", "y_min_level0", "x_max_level0", "y_max_level0"
        )
        if row["x_max_level0"] >= x_min and row["x_min_level0"] <= x_max
        and row["y_max_level0"] >= y_min and row["y_min_level0"] <= y_max
    }


def test_benchmark_core_measures_every_endpoint(transactional_db, cmu_slide, tmp_path):
    assert populate_instances(cmu_slide, 2000) == 2000
    cookies = viewer_cookies()
    # The server signs sessions with this process's key, so the cookie is valid there.
    env = child_environment(tmp_path, NEPHROWEB_SECRET_KEY=settings.SECRET_KEY,
                            NEPHROWEB_TILE_CACHE_URL="")
    env.pop("REDIS_URL", None)
    with web_server(env, tmp_path / "web.log") as base_url:
        result = measure_endpoints(base_url, cookies, cmu_slide, requests_per_endpoint=20,
                                   clients=2, max_seconds=120)

    assert set(result["endpoints"]) == ENDPOINTS
    for name, summary in result["endpoints"].items():
        assert SUMMARY_FIELDS <= set(summary), name
        assert summary["requests"] == 20, name
        assert summary["errors"] == 0, name
        assert summary["p50_ms"] <= summary["p95_ms"], name
        assert summary["p95_ms"] <= summary["max_ms"], name
    whole = result["endpoints"]["viewport_whole_slide"]
    assert whole["features"] == 2000
    assert whole["truncated"] is False
    for name in ("screen", "typical"):
        box = result["viewport_boxes_level0"][name]
        assert result["endpoints"][f"viewport_{name}"]["features"] == len(overlapping_ids(cmu_slide, *box))
    # The typical box covers a quarter of the slide: about 500 of the 2 000 evenly spread
    # instances, plus about 50 that cross its edges.
    assert 450 <= result["endpoints"]["viewport_typical"]["features"] <= 650
    assert result["endpoints"]["tile_cold"]["mean_bytes"] == result["endpoints"]["tile_cached"]["mean_bytes"]


def test_viewport_returns_exactly_overlapping(db, cmu_slide, client_for):
    populate_instances(cmu_slide, 2000)
    client = client_for("pathologist")
    boxes = dict(viewport_boxes(cmu_slide), small=[500.0, 700.0, 620.0, 810.0])
    for name, box in boxes.items():
        query = ",".join(str(value) for value in box)
        response = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox={query}&limit=20000")
        assert response.status_code == 200, name
        body = json.loads(response.content)
        ids = [feature["id"] for feature in body["features"]]
        assert set(ids) == overlapping_ids(cmu_slide, *box), name
        assert ids == sorted(ids), name
        assert body["truncated"] is False, name
    assert 0 < len(overlapping_ids(cmu_slide, *boxes["small"])) < 50


def test_viewport_box_edges_count_as_overlap(db, cmu_slide, client_for):
    populate_instances(cmu_slide, 100)
    instance = Instance.objects.filter(slide=cmu_slide).order_by("id").first()
    client = client_for("pathologist")
    # A box that only touches the instance's right edge still returns it.
    x = instance.x_max_level0
    y = (instance.y_min_level0 + instance.y_max_level0) / 2
    body = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox={x},{y},{x + 1},{y + 1}").json()
    assert instance.pk in [feature["id"] for feature in body["features"]]


def test_viewport_feature_matches_stored(db, cmu_slide, client_for):
    populate_instances(cmu_slide, 10)
    instance = Instance.objects.filter(slide=cmu_slide).order_by("id").first()
    client = client_for("pathologist")
    box = f"{instance.x_min_level0},{instance.y_min_level0},{instance.x_min_level0},{instance.y_min_level0}"
    body = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox={box}").json()
    feature = next(f for f in body["features"] if f["id"] == instance.pk)
    assert feature["type"] == "Feature"
    assert feature["geometry"] == instance.geometry
    assert feature["properties"] == {
        "class_name": "", "review_state": "pending", "source": "sam", "predicted_iou": 0.9,
        "stability_score": 0.95, "class_confidence": None, "area_um2": instance.area_um2,
        "version": 1, "model_version_name": None,
    }


def test_whole_slide_view_sends_every_vertex(db, cmu_slide, client_for):
    # Limitation of apps/annotations/viewport.py: no simplified outlines at low zoom.
    populate_instances(cmu_slide, 50)
    client = client_for("pathologist")
    box = ",".join(str(value) for value in viewport_boxes(cmu_slide)["whole_slide"])
    body = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox={box}").json()
    stored = dict(Instance.objects.filter(slide=cmu_slide).values_list("id", "geometry"))
    assert len(body["features"]) == 50
    for feature in body["features"]:
        assert feature["geometry"] == stored[feature["id"]]
        assert len(feature["geometry"]["coordinates"][0]) == 25


def test_viewport_truncates_at_limit(db, cmu_slide, client_for):
    populate_instances(cmu_slide, 300)
    client = client_for("pathologist")
    box = ",".join(str(value) for value in viewport_boxes(cmu_slide)["whole_slide"])
    body = client.get(f"/api/slides/{cmu_slide.pk}/instances/?bbox={box}&limit=120").json()
    ids = [feature["id"] for feature in body["features"]]
    assert len(ids) == 120
    assert len(set(ids)) == 120
    assert body["truncated"] is True
    assert set(ids) <= overlapping_ids(cmu_slide, *viewport_boxes(cmu_slide)["whole_slide"])


def test_viewport_query_uses_gist_index(db, cmu_slide):
    assert connection.vendor == "postgresql"
    populate_instances(cmu_slide, 2000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotations_instance")
    plan = explain_viewport(cmu_slide, [500.0, 700.0, 620.0, 810.0], 5000)
    assert plan["indexes_used"] == ["instance_bbox_gist"], plan["plan"]


def test_docs_section_replaced_in_place(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(f"# Benchmarks\n\n{DOCS_BEGIN}\nstale numbers\n{DOCS_END}\n\n## Other section\n")
    summary = {"requests": 2, "errors": 0, "p50_ms": 1.0, "p95_ms": 2.0, "max_ms": 3.0,
               "mean_bytes": 10}
    result = {
        "slide": {"file": "a.svs", "width_px": 10, "height_px": 20}, "instances": 5,
        "px_per_instance": 40,
        "requests_per_endpoint": 2, "max_seconds": 1, "limit": 5000,
        "machine": "test", "explain": {"indexes_used": ["instance_bbox_gist"], "execution_ms": 0.5},
        "runs": [{"clients": 1, "endpoints": {"tile_cold": summary}}],
    }
    write_docs(result, path)
    text = path.read_text()
    assert "stale numbers" not in text
    assert text.count(DOCS_BEGIN) == 1
    assert "| tile_cold | 1 | 2 | 0 | 1.0 | 2.0 | 3.0 | 10 |  |" in text
    assert text.endswith("## Other section\n")


def test_tile_addresses_skip_earlier_tiles():
    metadata = {"width_px": 1000, "height_px": 600, "tile_px": 256, "levels": 3}
    every_tile = tile_addresses(metadata, 100)
    # Level 2 (full size) has 4 x 3 tiles, level 1 has 2 x 2 and level 0 one.
    assert len(every_tile) == 17
    assert every_tile[:2] == [(2, 0, 0), (2, 1, 0)]
    assert every_tile[-1] == (0, 0, 0)
    assert tile_addresses(metadata, 5, skip=10) == every_tile[10:15]
    assert tile_addresses(metadata, 5, skip=15) == every_tile[15:]
