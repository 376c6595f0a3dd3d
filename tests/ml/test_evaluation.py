"""COCO AP, precision, recall and F1 through pycocotools, and the ml.evaluate CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils
from shapely.geometry import Point, Polygon, box

from ml.evaluation import (
    ClassMetrics,
    EvaluationError,
    EvaluationInstance,
    _rle_counts,
    coco_stats_from_files,
    evaluate_coco_files,
    evaluate_instances,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Published by the cocoapi demo for its "fake" results on 100 val2014 images.
FAKE100_BBOX = [
    0.5045806987, 0.6969727247, 0.5729816670, 0.5856257209, 0.5193996948, 0.5013978986,
    0.3868127796, 0.5936795763, 0.5953529829, 0.6398109626, 0.5664205979, 0.5642905983,
]  # fmt: skip
FAKE100_SEGM = [
    0.3195452759, 0.5622883973, 0.2989265341, 0.3873740316, 0.3101827240, 0.3269339071,
    0.2682297226, 0.4154486811, 0.4168394992, 0.4694498623, 0.3767592267, 0.3814715100,
]  # fmt: skip
# Computed with a plain pycocotools 2.0.11 run (default parameters) on the HuBMAP pair.
HUBMAP_SEGM = [
    0.228900, 0.443206, 0.198711, 0.187985, 0.306552, 0.274557,
    0.070627, 0.299670, 0.330693, 0.242949, 0.424823, 0.400000,
]  # fmt: skip
HUBMAP_BBOX = [
    0.213690, 0.424754, 0.196640, 0.180108, 0.281600, 0.296258,
    0.069307, 0.285479, 0.315842, 0.235897, 0.400000, 0.416667,
]  # fmt: skip


@pytest.fixture(scope="module")
def fake100(shared_data: Path) -> Path:
    return shared_data / "coco_map" / "cocoapi_fake100"


@pytest.fixture(scope="module")
def hubmap(shared_data: Path) -> Path:
    return shared_data / "coco_map" / "hubmap_vessels_custom"


def truth(class_name: str, geometry, image_id: str = "slide") -> EvaluationInstance:
    return EvaluationInstance(image_id, class_name, geometry)


def pred(class_name: str, geometry, score: float, image_id: str = "slide") -> EvaluationInstance:
    return EvaluationInstance(image_id, class_name, geometry, score=score)


def single_class(truth_list, predictions, class_name: str, **options) -> ClassMetrics:
    """Evaluate instances of one class and return that class's metrics."""
    return evaluate_instances(truth_list, predictions, [class_name], **options).per_class[0]


# --- Reference numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("results_file", "iou_type", "expected"),
    [
        ("instances_val2014_fakebbox100_results.json", "bbox", FAKE100_BBOX),
        ("instances_val2014_fakesegm100_results.json", "segm", FAKE100_SEGM),
    ],
)
def test_fake100_published_stats(fake100: Path, results_file, iou_type, expected) -> None:
    stats = coco_stats_from_files(
        fake100 / "instances_val2014_100.json", fake100 / results_file, iou_type
    )

    assert len(stats) == 12
    assert stats == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("iou_type", "expected"), [("segm", HUBMAP_SEGM), ("bbox", HUBMAP_BBOX)])
def test_hubmap_computed_stats(hubmap: Path, iou_type, expected) -> None:
    stats = coco_stats_from_files(
        hubmap / "gt_coco.json", hubmap / "dt_coco_instances_results.json", iou_type
    )

    assert stats == pytest.approx(expected, abs=1e-6)


def test_fake100_mean_ap_equals_coco_ap(fake100: Path) -> None:
    result = evaluate_coco_files(
        fake100 / "instances_val2014_100.json",
        fake100 / "instances_val2014_fakesegm100_results.json",
    )
    with_truth = [metrics for metrics in result.per_class if metrics.n_truth > 0]

    # No image has more than 100 detections, so the per-class cap equals COCO's.
    assert result.max_detections_per_image == 100
    assert len(result.per_class) == 80
    assert result.mean.n_classes == len(with_truth) == 70
    assert result.mean.ap == pytest.approx(FAKE100_SEGM[0], abs=1e-9)
    assert result.mean.ap50 == pytest.approx(FAKE100_SEGM[1], abs=1e-9)
    assert result.mean.ap75 == pytest.approx(FAKE100_SEGM[2], abs=1e-9)
    assert all(metrics.ap is None for metrics in result.per_class if metrics.n_truth == 0)


def test_hubmap_ids_and_category_zero_normalised(hubmap: Path, tmp_path: Path) -> None:
    gt = json.loads((hubmap / "gt_coco.json").read_text())
    results = json.loads((hubmap / "dt_coco_instances_results.json").read_text())
    expected = coco_stats_from_files(
        hubmap / "gt_coco.json", hubmap / "dt_coco_instances_results.json"
    )

    # Annotation ids counted from 0 in reverse order, no iscrowd keys, category id 7.
    for number, ann in enumerate(reversed(gt["annotations"])):
        ann["id"] = number
        del ann["iscrowd"]
        ann["category_id"] = 7
    gt["categories"][0]["id"] = 7
    for result in results:
        result["category_id"] = 7
        result["id"] = 123
    gt_path = tmp_path / "gt.json"
    dt_path = tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))

    assert coco_stats_from_files(gt_path, dt_path) == pytest.approx(expected, abs=1e-12)


def test_polygon_and_uncompressed_results(tmp_path: Path) -> None:
    square = [10, 10, 30, 10, 30, 30, 10, 30]
    tall_rectangle = [40, 10, 55, 10, 55, 40, 40, 40]
    gt = {
        "images": [{"id": 0, "height": 50, "width": 60}],
        "categories": [{"id": 0, "name": "glomerulus"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [square]},
            {"id": 1, "image_id": 0, "category_id": 0, "segmentation": [tall_rectangle]},
        ],
    }
    # The second object as uncompressed RLE: 15 columns of 30 pixels from row 10.
    mask = np.ones((30, 15), dtype=bool)
    counts = _rle_counts(mask, column_offset=40, row_offset=10, height=50, width=60)
    uncompressed_rle = {"size": [50, 60], "counts": counts}
    results = [
        {"image_id": 0, "category_id": 0, "score": 0.9, "segmentation": [square]},
        {"image_id": 0, "category_id": 0, "score": 0.8, "segmentation": uncompressed_rle},
    ]
    gt_path = tmp_path / "gt.json"
    dt_path = tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))

    metrics = evaluate_coco_files(gt_path, dt_path).per_class[0]

    assert metrics.n_truth == 2
    assert metrics.ap50 == pytest.approx(1.0)
    assert metrics.recall == 1.0


def test_coco_results_unknown_image(hubmap: Path, tmp_path: Path) -> None:
    results = json.loads((hubmap / "dt_coco_instances_results.json").read_text())
    results[3]["image_id"] = 999
    dt_path = tmp_path / "dt.json"
    dt_path.write_text(json.dumps(results))

    with pytest.raises(EvaluationError, match=r"dt\.json, detection 3 has image_id 999"):
        evaluate_coco_files(hubmap / "gt_coco.json", dt_path)


# --- Polygon instances with known AP -------------------------------------------------


def test_perfect_predictions_ap_one() -> None:
    glomeruli = [box(100, 100, 180, 170), Point(400, 300).buffer(50)]
    tubules = [box(1000, 1000, 1030, 1060), box(1100, 1000, 1120, 1050), box(900, 900, 950, 940)]
    truth_list = [truth("glomerulus", g) for g in glomeruli] + [truth("tubule", g) for g in tubules]
    predictions = [
        pred(instance.class_name, instance.geometry_level0, 0.5 + 0.1 * i)
        for i, instance in enumerate(truth_list)
    ]

    result = evaluate_instances(truth_list, predictions, ["glomerulus", "tubule"])

    for metrics in result.per_class:
        assert metrics.ap == pytest.approx(1.0)
        assert metrics.ap50 == pytest.approx(1.0)
        assert metrics.ap75 == pytest.approx(1.0)
        assert metrics.precision == 1.0
        assert metrics.recall == 1.0
        assert metrics.f1 == 1.0
    assert [m.n_truth for m in result.per_class] == [2, 3]
    assert [m.n_pred for m in result.per_class] == [2, 3]
    assert result.mean.ap == pytest.approx(1.0)
    assert result.coco_stats[0] == pytest.approx(1.0)


def test_one_of_two_missed() -> None:
    truth_list = [truth("glomerulus", box(0, 0, 50, 50)), truth("glomerulus", box(200, 0, 250, 50))]
    predictions = [pred("glomerulus", box(0, 0, 50, 50), 0.9)]

    metrics = evaluate_instances(truth_list, predictions, ["glomerulus"]).per_class[0]

    # The one prediction is correct, so the precision-recall curve is precision 1 up to
    # recall 0.5 and nothing beyond. COCO samples the interpolated precision at the 101
    # recall points 0.00, 0.01, ..., 1.00: the 51 points from 0.00 to 0.50 get precision
    # 1 and the 50 points above 0.50 get 0, so AP = 51 / 101 at every IoU threshold.
    assert metrics.ap == pytest.approx(51 / 101, abs=1e-12)
    assert metrics.ap50 == pytest.approx(51 / 101, abs=1e-12)
    assert metrics.ap75 == pytest.approx(51 / 101, abs=1e-12)
    assert metrics.recall == 0.5
    assert metrics.precision == 1.0
    assert metrics.f1 == pytest.approx(2 / 3)


def test_false_positive_ranked_first() -> None:
    truth_list = [truth("glomerulus", box(0, 0, 50, 50))]
    predictions = [
        pred("glomerulus", box(300, 300, 350, 350), 0.9),
        pred("glomerulus", box(0, 0, 50, 50), 0.8),
    ]

    metrics = evaluate_instances(truth_list, predictions, ["glomerulus"]).per_class[0]

    # Ranked by score the curve is (recall 0, precision 0), then (1, 0.5). COCO makes
    # precision non-increasing from the right, so all 101 recall points get 0.5.
    assert metrics.ap == pytest.approx(0.5, abs=1e-12)
    assert metrics.precision == 0.5
    assert metrics.recall == 1.0
    assert metrics.f1 == pytest.approx(2 / 3)


def test_score_threshold_only_changes_f1() -> None:
    truth_list = [truth("glomerulus", box(0, 0, 50, 50))]
    predictions = [
        pred("glomerulus", box(300, 300, 350, 350), 0.2),
        pred("glomerulus", box(0, 0, 50, 50), 0.8),
    ]

    metrics = single_class(truth_list, predictions, "glomerulus", score_threshold=0.5)

    assert metrics.ap == pytest.approx(1.0)
    assert metrics.precision == 1.0
    assert metrics.f1 == 1.0
    assert metrics.n_pred == 2


def test_iou_exactly_point_six() -> None:
    # Squares of side 40 offset by 10: intersection 30 x 40, union 50 x 40, IoU 0.6.
    truth_list = [truth("vessel", box(0, 0, 40, 40))]
    predictions = [pred("vessel", box(10, 0, 50, 40), 0.7)]

    metrics = evaluate_instances(truth_list, predictions, ["vessel"]).per_class[0]

    # The match counts at the thresholds 0.50, 0.55 and 0.60 (COCO matches IoU >= t),
    # so 3 of the 10 thresholds have AP 1 and the others AP 0.
    assert metrics.ap50 == pytest.approx(1.0)
    assert metrics.ap75 == 0.0
    assert metrics.ap == pytest.approx(3 / 10, abs=1e-12)


def test_class_without_truth_not_in_mean() -> None:
    truth_list = [truth("glomerulus", box(0, 0, 50, 50))]
    predictions = [
        pred("glomerulus", box(0, 0, 50, 50), 0.9),
        pred("artery", box(100, 0, 150, 50), 0.8),
    ]

    result = evaluate_instances(truth_list, predictions, ["glomerulus", "artery", "vein"])
    artery = result.per_class[1]

    assert [m.class_name for m in result.per_class] == ["glomerulus", "artery", "vein"]
    assert artery.n_truth == 0
    assert artery.n_pred == 1
    for value in (artery.ap, artery.ap50, artery.ap75, artery.precision, artery.recall, artery.f1):
        assert value is None
    assert result.per_class[2].ap is None
    assert result.mean.n_classes == 1
    assert result.mean.ap == pytest.approx(1.0)
    assert result.to_dict()["classes"][1]["ap"] is None


def test_150_detections_one_image() -> None:
    # A 15 x 10 grid of 20 x 20 squares, 30 pixels apart.
    corners = [(30 * (i % 15), 30 * (i // 15)) for i in range(150)]
    squares = [box(x, y, x + 20, y + 20) for x, y in corners]
    truth_list = [truth("tubule", square) for square in squares]
    predictions = [pred("tubule", square, 0.99) for square in squares]

    result = evaluate_instances(truth_list, predictions, ["tubule"])

    assert result.max_detections_per_image == 150
    assert result.per_class[0].ap == pytest.approx(1.0)
    assert result.per_class[0].recall == 1.0
    # COCO's own AP keeps its cap of 100 detections per image, so recall stops at 2/3.
    assert result.coco_stats[8] == pytest.approx(100 / 150)


def test_input_order_and_ids_irrelevant() -> None:
    rng = random.Random(7)
    truth_list, predictions = [], []
    for image in ("a", "b"):
        for i in range(12):
            square = box(60 * i, 0, 60 * i + 40, 40)
            truth_list.append(truth("glomerulus" if i % 2 else "tubule", square, image))
            # Predictions shifted by varying amounts, with tied scores.
            shifted = box(60 * i + i, 0, 60 * i + 40 + i, 40)
            predictions.append(pred(truth_list[-1].class_name, shifted, 0.5 + (i % 3) * 0.1, image))
    predictions.append(pred("tubule", box(5, 2, 45, 42), 0.6, "a"))
    expected = evaluate_instances(truth_list, predictions, ["tubule", "glomerulus"])

    for _ in range(3):
        rng.shuffle(truth_list)
        rng.shuffle(predictions)
        shuffled = evaluate_instances(truth_list, predictions, ["tubule", "glomerulus"])
        assert shuffled == expected
    reordered = evaluate_instances(truth_list, predictions, ["glomerulus", "tubule"])
    assert reordered.per_class == tuple(reversed(expected.per_class))


def test_regions_exclude_outside_objects() -> None:
    inside, outside = box(10, 10, 60, 60), box(500, 500, 550, 550)
    truth_list = [truth("glomerulus", inside), truth("glomerulus", outside)]
    predictions = [
        pred("glomerulus", inside, 0.9),
        pred("glomerulus", box(600, 600, 650, 650), 0.95),  # false positive outside
        # 60 % inside the region, so kept: a false positive.
        pred("glomerulus", box(170, 10, 220, 60), 0.3),
        # 40 % inside the region, so dropped.
        pred("glomerulus", box(180, 100, 230, 150), 0.99),
    ]
    region = box(0, 0, 200, 200)

    unrestricted = single_class(truth_list, predictions, "glomerulus")
    restricted = single_class(truth_list, predictions, "glomerulus", regions={"slide": region})

    assert unrestricted.n_truth == 2
    assert unrestricted.n_pred == 4
    assert restricted.n_truth == 1
    assert restricted.n_pred == 2
    assert restricted.ap == pytest.approx(1.0)
    assert restricted.precision == 0.5
    assert restricted.recall == 1.0


def test_region_overlap_threshold_parameter() -> None:
    truth_list = [truth("glomerulus", box(170, 10, 220, 60))]  # 60 % inside
    predictions = [pred("glomerulus", box(170, 10, 220, 60), 0.9)]
    regions = {"slide": [box(0, 0, 200, 200)]}

    strict = single_class(
        truth_list, predictions, "glomerulus", regions=regions, min_region_overlap=0.7
    )
    lenient = single_class(
        truth_list, predictions, "glomerulus", regions=regions, min_region_overlap=0.6
    )

    assert strict.n_truth == 0
    assert strict.ap is None
    assert lenient.n_truth == 1
    assert lenient.ap == pytest.approx(1.0)


def test_other_image_not_limited_by_regions() -> None:
    truth_list = [truth("glomerulus", box(500, 500, 550, 550), "other")]
    predictions = [pred("glomerulus", box(500, 500, 550, 550), 0.9, "other")]

    regions = {"slide": box(0, 0, 10, 10)}

    metrics = single_class(truth_list, predictions, "glomerulus", regions=regions)

    assert metrics.n_truth == 1
    assert metrics.ap == pytest.approx(1.0)


def test_ring_predicted_as_filled_square() -> None:
    # Ring: 40 x 40 square with a 20 x 20 hole, area 1200. The filled square has area
    # 1600, so IoU = 1200 / 1600 = 0.75 and the pair matches at 0.50 ... 0.75.
    ring = Polygon(
        [(0, 0), (40, 0), (40, 40), (0, 40)], holes=[[(10, 10), (30, 10), (30, 30), (10, 30)]]
    )
    filled = box(0, 0, 40, 40)

    as_filled = single_class([truth("tubule", ring)], [pred("tubule", filled, 0.9)], "tubule")
    as_ring = single_class([truth("tubule", ring)], [pred("tubule", ring, 0.9)], "tubule")

    assert as_filled.ap == pytest.approx(6 / 10, abs=1e-12)
    assert as_filled.ap75 == pytest.approx(1.0)
    assert as_ring.ap == pytest.approx(1.0)


def test_ring_disc_iou_from_areas() -> None:
    # A round ring against its filled disc: IoU = ring area / disc area = 0.75 within
    # rasterisation error, so thresholds 0.50 to 0.70 pass and 0.80 and above fail.
    disc = Point(500, 500).buffer(200, quad_segs=64)
    ring = disc.difference(Point(500, 500).buffer(100, quad_segs=64))
    assert ring.area / disc.area == pytest.approx(0.75, abs=1e-3)

    metrics = single_class([truth("tubule", ring)], [pred("tubule", disc, 0.9)], "tubule")

    assert metrics.ap in (pytest.approx(5 / 10), pytest.approx(6 / 10))


def test_far_from_origin_slide_coordinates() -> None:
    # Objects near (95000, 80000) of a large slide: only their bounding window is rasterised.
    square = box(95_000, 80_000, 95_040, 80_040)
    shifted = box(95_010, 80_000, 95_050, 80_040)

    metrics = single_class([truth("vessel", square)], [pred("vessel", shifted, 0.5)], "vessel")

    assert metrics.ap == pytest.approx(3 / 10, abs=1e-12)


def test_window_too_large_rejected() -> None:
    truth_list = [
        truth("glomerulus", box(0, 0, 10, 10)),
        truth("glomerulus", box(70_000, 70_000, 70_010, 70_010)),
    ]

    with pytest.raises(EvaluationError, match="Pass evaluation regions"):
        evaluate_instances(truth_list, [], ["glomerulus"])


def test_mask_matches_polygon() -> None:
    # A tall, narrow mask checks that masks are encoded in COCO's column-major order.
    mask = np.zeros((30, 8), dtype=bool)
    mask[5:25, 2:6] = True
    polygon = box(1002, 2005, 1006, 2025)
    mask_instance = EvaluationInstance(
        "slide", "vessel", mask=mask, mask_origin_level0_xy=(1000, 2000), score=0.9
    )

    metrics = single_class([truth("vessel", polygon)], [mask_instance], "vessel")

    assert metrics.ap == pytest.approx(1.0)


def test_no_predictions_gives_zero() -> None:
    metrics = single_class([truth("glomerulus", box(0, 0, 10, 10))], [], "glomerulus")

    assert metrics.ap == 0.0
    assert metrics.precision == 0.0
    assert metrics.recall == 0.0
    assert metrics.f1 == 0.0


def test_bbox_iou_type() -> None:
    # The L shape's box is the square, so the boxes match exactly. Its area is
    # 1600 - 20 * 28 = 1040, so the masks have IoU 1040 / 1600 = 0.65.
    l_shape = box(0, 0, 40, 40).difference(box(20, 0, 40, 28))
    square = box(0, 0, 40, 40)

    truth_list = [truth("vessel", square)]
    predictions = [pred("vessel", l_shape, 0.9)]

    boxes = single_class(truth_list, predictions, "vessel", iou_type="bbox")
    masks = single_class(truth_list, predictions, "vessel")

    assert boxes.ap == pytest.approx(1.0)
    assert masks.ap50 == pytest.approx(1.0)
    assert masks.ap75 == 0.0
    assert masks.ap == pytest.approx(4 / 10, abs=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"class_names": ["glomerulus"], "predictions": [pred("tubule", box(0, 0, 5, 5), 0.5)]},
            "not in class_names",
        ),
        (
            {"class_names": ["glomerulus"], "predictions": [truth("glomerulus", box(0, 0, 5, 5))]},
            "has no score",
        ),
        ({"class_names": ["a", "a"], "predictions": []}, "more than once"),
    ],
)
def test_invalid_input_rejected(kwargs, message) -> None:
    with pytest.raises(EvaluationError, match=message):
        evaluate_instances([truth("glomerulus", box(0, 0, 5, 5))], **kwargs)


def test_instance_needs_one_shape() -> None:
    with pytest.raises(EvaluationError, match="exactly one of geometry_level0 and mask"):
        EvaluationInstance("slide", "glomerulus")


@settings(max_examples=60, deadline=None)
@given(
    mask=arrays(bool, st.tuples(st.integers(1, 7), st.integers(1, 7))),
    column_offset=st.integers(0, 5),
    row_offset=st.integers(0, 5),
    extra_height=st.integers(0, 3),
    extra_width=st.integers(0, 3),
)
def test_rle_counts_match_full_canvas(
    mask, column_offset, row_offset, extra_height, extra_width
) -> None:
    local_height, local_width = mask.shape
    height = local_height + row_offset + extra_height
    width = local_width + column_offset + extra_width
    canvas = np.zeros((height, width), dtype=np.uint8)
    rows = slice(row_offset, row_offset + local_height)
    columns = slice(column_offset, column_offset + local_width)
    canvas[rows, columns] = mask

    counts = _rle_counts(mask, column_offset, row_offset, height, width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)

    assert rle["counts"] == mask_utils.encode(np.asfortranarray(canvas))["counts"]


# --- Command line --------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml.evaluate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def feature(geometry, class_name: str | None, **properties) -> dict:
    if class_name is not None:
        properties["classification"] = {"name": class_name}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [list(geometry.exterior.coords)]},
        "properties": properties,
    }


def write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.parametrize(("iou_type", "expected"), [("segm", HUBMAP_SEGM), ("bbox", HUBMAP_BBOX)])
def test_cli_hubmap_coco(hubmap: Path, iou_type, expected) -> None:
    completed = run_cli(
        "--truth", str(hubmap / "gt_coco.json"),
        "--pred", str(hubmap / "dt_coco_instances_results.json"),
        "--iou-type", iou_type,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert list(report["coco_stats"].values()) == pytest.approx(expected, abs=1e-6)
    assert report["classes"][0]["class_name"] == "blood_vessel"
    assert report["classes"][0]["n_truth"] == 303
    assert report["classes"][0]["n_pred"] == 503
    assert report["mean"]["ap"] == pytest.approx(expected[0], abs=1e-6)


def test_cli_geojson_pair(tmp_path: Path) -> None:
    truth_path = write_geojson(
        tmp_path / "truth.geojson",
        [
            feature(box(0, 0, 40, 40), "Glomerulus"),
            feature(box(100, 0, 140, 40), "Glomerulus"),
            feature(box(300, 0, 320, 30), "Tubule"),
            feature(box(0, 0, 1000, 1000), None),  # unclassified tissue outline
        ],
    )
    pred_path = write_geojson(
        tmp_path / "pred.geojson",
        [
            feature(box(0, 0, 40, 40), "Glomerulus", score=0.9),
            feature(box(300, 0, 320, 30), "Tubule", measurements={"score": 0.8}),
            feature(
                box(10, 0, 50, 40), "Tubule", objectType="detection", measurements={"score": 0.3}
            ),
        ],
    )

    completed = run_cli("--truth", str(truth_path), "--pred", str(pred_path))

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    classes = {entry["class_name"]: entry for entry in report["classes"]}
    assert classes["Glomerulus"]["ap"] == pytest.approx(51 / 101)
    assert classes["Glomerulus"]["recall"] == 0.5
    assert classes["Tubule"]["ap"] == pytest.approx(1.0)
    assert classes["Tubule"]["precision"] == 0.5
    assert classes["Tubule"]["n_pred"] == 2
    assert report["mean"]["n_classes"] == 2
    assert report["unclassified_skipped"] == {"truth": 1, "pred": 0}


def test_cli_geojson_regions(tmp_path: Path) -> None:
    truth_path = write_geojson(
        tmp_path / "truth.geojson",
        [feature(box(0, 0, 40, 40), "Glomerulus"), feature(box(500, 0, 540, 40), "Glomerulus")],
    )
    pred_path = write_geojson(
        tmp_path / "pred.geojson", [feature(box(0, 0, 40, 40), "Glomerulus", score=0.9)]
    )
    regions_path = write_geojson(tmp_path / "regions.geojson", [feature(box(0, 0, 200, 200), None)])

    completed = run_cli(
        "--truth", str(truth_path), "--pred", str(pred_path), "--regions", str(regions_path)
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["classes"][0]["ap"] == pytest.approx(1.0)


def test_cli_prediction_without_score(tmp_path: Path) -> None:
    square = box(0, 0, 40, 40)
    truth_path = write_geojson(tmp_path / "truth.geojson", [feature(square, "Glomerulus")])
    pred_path = write_geojson(tmp_path / "pred.geojson", [feature(square, "Glomerulus")])

    completed = run_cli("--truth", str(truth_path), "--pred", str(pred_path))

    assert completed.returncode == 1
    assert "pred.geojson, object 0" in completed.stderr
    assert "--score-key" in completed.stderr


def test_cli_unreadable_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [], "annotations": [')

    missing = run_cli("--truth", str(tmp_path / "missing.json"), "--pred", str(broken))
    truncated = run_cli("--truth", str(broken), "--pred", str(broken))

    assert missing.returncode == 1
    assert "missing.json" in missing.stderr
    assert truncated.returncode == 1
    assert f"{broken} is not valid JSON: Expecting value: line 1 column 32" in truncated.stderr


def test_cli_usage_errors(hubmap: Path, tmp_path: Path) -> None:
    geojson = write_geojson(
        tmp_path / "pred.geojson", [feature(box(0, 0, 40, 40), "Glomerulus", score=0.5)]
    )

    no_pred = run_cli("--truth", str(hubmap / "gt_coco.json"))
    mixed = run_cli("--truth", str(hubmap / "gt_coco.json"), "--pred", str(geojson))
    bad_type = run_cli("--truth", str(geojson), "--pred", str(geojson), "--iou-type", "keypoints")

    assert no_pred.returncode == 2
    assert mixed.returncode == 2
    assert "Give both files as COCO or both as GeoJSON" in mixed.stderr
    assert bad_type.returncode == 2
