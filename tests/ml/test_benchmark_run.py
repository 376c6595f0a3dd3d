"""The speed benchmark (benchmarks/run.py) on the tiny SAM: report, recall, merge, docs."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from shapely.geometry import box

from benchmarks.merge_scaling import synthetic_instances
from benchmarks.reference_proposals import pairwise_merge, reference_tiles
from benchmarks.run import SECTION_TITLE, STAGES, main, recall_at_iou
from ml.merge import merge_instances

# With the tiny SAM of seed 1 and 4 x 4 points, the one 1024 px tile of
# cmu-1-small-region.svs at 2 µm/px keeps one instance on both paths.
TINY_ARGS = [
    "--quick", "--sam-type", "tiny", "--seed", "1", "--points-per-side", "4",
    "--merge-reference-instances", "200",
]


@pytest.fixture(scope="module")
def quick_report(
    django_db_setup, django_db_blocker, shared_data: Path, tmp_path_factory
) -> tuple[dict, Path]:
    """Run the benchmark once for the module, writing to the test database and a docs copy."""
    docs = tmp_path_factory.mktemp("docs") / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Other section\n\nKept as it is.\n", encoding="utf-8")
    slide = shared_data / "wsi" / "cmu-1-small-region.svs"
    output = io.StringIO()
    with django_db_blocker.unblock(), contextlib.redirect_stdout(output):
        assert main([*TINY_ARGS, "--slide", str(slide), "--docs", str(docs)]) == 0
    return json.loads(output.getvalue()), docs


def test_quick_run_times_every_stage(quick_report):
    report, _ = quick_report
    for path in ("ours", "reference"):
        stage_seconds = report["paths"][path]["stage_seconds"]
        assert set(stage_seconds) == set(STAGES)
        for stage in ("read", "encoder", "mask_generation", "polygons", "merge"):
            assert stage_seconds[stage] > 0, (path, stage)
        assert report["paths"][path]["total_seconds"] >= report["paths"][path]["wall_seconds"]
        assert report["paths"][path]["peak_memory"]["tracemalloc_peak_mib"] > 0
        assert report["paths"][path]["peak_memory"]["max_rss_mib"] > 0
    assert set(report["ratios"]) == {*STAGES, "total"}


def test_quick_run_writes_database_rows(quick_report):
    report, _ = quick_report
    for path in ("ours", "reference"):
        assert report["paths"][path]["stage_seconds"]["database_write"] > 0
        assert report["paths"][path]["database_write"]["rows"] == report["paths"][path]["instances"]


def test_quick_run_deletes_its_slide_row(quick_report, db):
    from apps.slides.models import Slide as SlideRow

    assert not SlideRow.objects.filter(name__startswith="speed benchmark").exists()


def test_quick_run_recall_and_counts(quick_report):
    report, _ = quick_report
    assert report["paths"]["ours"]["instances"] == 1
    assert report["paths"]["reference"]["instances"] == 1
    assert report["recall_at_iou_0_8"] == 1.0
    assert report["paths"]["reference"]["counts"]["tiles_processed"] == 1
    assert report["merge_scaling"]["instances"] == 10_000
    assert report["merge_scaling"]["same_kept"] is True


def test_docs_section_replaced_in_copy(quick_report):
    report, docs = quick_report
    text = docs.read_text(encoding="utf-8")
    assert "## Other section\n\nKept as it is." in text
    assert text.count(SECTION_TITLE) == 1
    for stage in STAGES:
        assert f"| {stage} |" in text
    assert "Recall at IoU 0.8 of the reference's instances by ours: 1.000" in text
    assert report["date_utc"] in text
    assert "--docs" not in report["command"]


def test_recall_of_identical_sets_is_one():
    polygons = [box(0, 0, 10, 10), box(20, 0, 35, 12), box(0, 40, 5, 60)]
    assert recall_at_iou(polygons, list(polygons)) == 1.0


def test_recall_counts_iou_threshold():
    reference = [box(0, 0, 10, 10), box(100, 0, 110, 10)]
    # Shifted by 1 px: IoU 90 / 110 = 0.818. Shifted by 2 px: IoU 80 / 120 = 0.667.
    ours = [box(1, 0, 11, 10), box(102, 0, 112, 10)]
    assert recall_at_iou(reference, ours) == 0.5
    assert recall_at_iou(reference, ours, iou_threshold=0.6) == 1.0


def test_recall_empty_sets():
    assert recall_at_iou([], [box(0, 0, 1, 1)]) is None
    assert recall_at_iou([box(0, 0, 1, 1)], []) == 0.0


def test_pairwise_merge_keeps_same_as_merge_instances():
    instances = synthetic_instances(600, seed=3)
    ours = merge_instances(instances)
    reference = pairwise_merge(instances)
    assert len(ours.dropped_duplicate) > 0
    assert {id(item) for item in reference} == {id(item) for item in ours.kept}


def test_synthetic_instances_exact_count():
    instances = synthetic_instances(1001, seed=0)
    assert len(instances) == 1001
    assert len({instance.tile_index for instance in instances}) > 1


def test_reference_tiles_overlap_half_a_tile():
    tiles = reference_tiles(3000, 1024, 1024)
    assert [tile.x_px for tile in tiles] == [0, 512, 1024, 1536, 1976]
    assert {tile.y_px for tile in tiles} == {0}


def test_merge_only_writes_its_own_section(tmp_path):
    from benchmarks.run import MERGE_SECTION_TITLE, merge_section

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n", encoding="utf-8")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(["--merge-only", "300", "--merge-reference-instances", "50",
                     "--docs", str(docs)]) == 0
    report = json.loads(output.getvalue())
    # Only the full-size run of 100 000 instances updates the docs.
    assert docs.read_text(encoding="utf-8") == "# Benchmarks\n"
    assert report["instances"] == 300
    assert report["same_kept"] is True

    section = merge_section(report, "the command")
    assert section.startswith(MERGE_SECTION_TITLE + "\n")
    assert f"took {report['seconds']:.2f} s and kept {report['kept']}" in section
    assert "`the command`" in section
