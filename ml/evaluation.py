"""Instance segmentation metrics: per-class COCO AP and F1 at IoU 0.5, through pycocotools.

Two entry points share one COCOeval run (``_evaluate_coco``):

- ``evaluate_instances`` takes level-0 polygons or binary masks, optionally limited to
  evaluation regions, rasterises them to RLE and evaluates them.
- ``evaluate_coco_files`` and ``coco_stats_from_files`` read a COCO ground truth file and
  a COCO results file.

Matching, AP and AR come from ``pycocotools.cocoeval.COCOeval``; this module only
prepares its input and reads its output. Inputs are normalised so that annotation ids,
input order, missing or boolean ``iscrowd`` flags, a category id of 0 and polygon or
uncompressed-RLE results do not change the numbers.

Usage::

    truth = [EvaluationInstance("slide-1", "glomerulus", glomerulus_polygon)]
    predictions = [EvaluationInstance("slide-1", "glomerulus", predicted_polygon, score=0.9)]
    result = evaluate_instances(truth, predictions, ["glomerulus", "tubule"])
    result.per_class[0].ap, result.mean.ap
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from shapely.geometry import MultiPolygon, Polygon

from ml.errors import NephrowebError

logger = logging.getLogger(__name__)

IouType = Literal["segm", "bbox"]
IOU_TYPES = ("segm", "bbox")

# Names of the twelve numbers of COCOeval.summarize() for boxes and masks, in its order.
COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

# COCO's per-image detection caps. summarize() reads AP at 100 and AR at 1, 10 and 100.
COCO_MAX_DETECTIONS = (1, 10, 100)

# pycocotools stores RLE run lengths as 32-bit unsigned integers, so one run, and hence
# the canvas of one image, must stay below 2**32 pixels.
MAX_CANVAS_PIXELS = 2**32 - 1


class EvaluationError(NephrowebError, ValueError):
    """Evaluation input is invalid: an instance, a class list, a region or a COCO file."""


@dataclass(frozen=True, eq=False)
class EvaluationInstance:
    """One ground truth or predicted object of one image or slide.

    Give the shape either as ``geometry_level0`` or as ``mask``. A mask pixel (row r,
    col c) is the level-0 pixel (x0 + c, y0 + r) with (x0, y0) = ``mask_origin_level0_xy``.
    A polygon covers the level-0 pixels whose centre (x + 0.5, y + 0.5) lies inside it,
    holes excluded. Pixel (x, y) spans [x, x + 1] x [y, y + 1].

    Attributes:
        image_id: Image or slide that contains the object. Truth and predictions of the
            same image must use equal ids.
        class_name: Class of the object, one of the names passed to the evaluation.
        geometry_level0: Outline in level-0 pixels, a valid non-empty Polygon or
            MultiPolygon with its holes kept, or None when ``mask`` is given.
        mask: (H, W) binary mask with at least one set pixel, or None.
        mask_origin_level0_xy: Level-0 (x, y) of the mask's top-left pixel.
        score: Confidence of a prediction, a finite number. Ignored for ground truth.
    """

    image_id: Hashable
    class_name: str
    geometry_level0: Polygon | MultiPolygon | None = None
    mask: np.ndarray | None = None
    mask_origin_level0_xy: tuple[int, int] = (0, 0)
    score: float | None = None

    def __post_init__(self) -> None:
        where = f"EvaluationInstance of image {self.image_id!r}, class {self.class_name!r}"
        if (self.geometry_level0 is None) == (self.mask is None):
            raise EvaluationError(
                f"{where} needs exactly one of geometry_level0 and mask. Pass the polygon "
                "or the binary mask, not both or neither."
            )
        geometry = self.geometry_level0
        if geometry is not None and (
            not isinstance(geometry, (Polygon, MultiPolygon))
            or geometry.is_empty
            or not geometry.is_valid
        ):
            raise EvaluationError(
                f"{where} has an invalid, empty or non-polygonal geometry_level0 "
                f"({type(geometry).__name__}). Repair it with "
                "ml.polygons.make_valid_polygons first."
            )
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2 or not mask.any():
                raise EvaluationError(
                    f"{where} has a mask of shape {mask.shape} with {int(mask.sum())} set "
                    "pixels. A mask must be a 2-D (H, W) array with at least one set pixel."
                )
            origin = self.mask_origin_level0_xy
            is_integer = [isinstance(value, (int, np.integer)) for value in origin]
            if len(origin) != 2 or not all(is_integer):
                raise EvaluationError(
                    f"{where} has mask_origin_level0_xy {origin!r}. Expected two integers "
                    "(x, y) in level-0 pixels."
                )
        if self.score is not None and (
            isinstance(self.score, bool)
            or not isinstance(self.score, (int, float, np.number))
            or not math.isfinite(float(self.score))
        ):
            raise EvaluationError(f"{where} has score {self.score!r}. Expected a finite number.")


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class. Every metric is None when the class has no ground truth.

    Attributes:
        class_name: The class.
        n_truth: Ground truth objects counted (crowd regions excluded).
        n_pred: Predictions of the class, at any score.
        ap: COCO AP, the mean of the 101-point interpolated precision over IoU thresholds
            0.50:0.05:0.95.
        ap50: AP at IoU 0.5.
        ap75: AP at IoU 0.75.
        precision: True positives over predictions with score >= the score threshold, at
            IoU 0.5. It is 0.0 when the class has truth but no such predictions.
        recall: True positives over n_truth, at IoU 0.5.
        f1: 2 TP / (2 TP + FP + FN) at IoU 0.5, which is also the object-level Dice.
    """

    class_name: str
    n_truth: int
    n_pred: int
    ap: float | None
    ap50: float | None
    ap75: float | None
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class MeanMetrics:
    """Unweighted means over the ``n_classes`` classes with ground truth (None if none)."""

    n_classes: int
    ap: float | None
    ap50: float | None
    ap75: float | None
    precision: float | None
    recall: float | None
    f1: float | None


@dataclass(frozen=True)
class EvaluationResult:
    """Per-class metrics, their mean and COCO's twelve standard numbers.

    Attributes:
        iou_type: "segm" (masks) or "bbox" (boxes).
        per_class: One entry per class, in category order.
        mean: Means over classes with ground truth.
        coco_stats: COCOeval.summarize() output in the order of ``COCO_STAT_NAMES``, with
            COCO's caps (AP at 100 detections per image, AR at 1, 10 and 100). COCO writes
            -1 where an area range has no ground truth.
        max_detections_per_image: The cap used for ``per_class`` and ``mean``. It is at
            least the largest number of detections in one image, so no detection is
            dropped.
    """

    iou_type: str
    per_class: tuple[ClassMetrics, ...]
    mean: MeanMetrics
    coco_stats: tuple[float, ...]
    max_detections_per_image: int

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-ready data; COCO's -1 ("no ground truth") becomes None."""
        return {
            "iou_type": self.iou_type,
            "max_detections_per_image": self.max_detections_per_image,
            "classes": [vars(metrics).copy() for metrics in self.per_class],
            "mean": vars(self.mean).copy(),
            "coco_stats": {
                name: (None if value == -1 else value)
                for name, value in zip(COCO_STAT_NAMES, self.coco_stats, strict=True)
            },
        }


def evaluate_instances(
    truth: Sequence[EvaluationInstance],
    predictions: Sequence[EvaluationInstance],
    class_names: Sequence[str],
    regions: Mapping[Hashable, Polygon | MultiPolygon | Sequence[Polygon | MultiPolygon]]
    | None = None,
    *,
    min_region_overlap: float = 0.5,
    score_threshold: float = 0.0,
    iou_type: IouType = "segm",
) -> EvaluationResult:
    """Evaluate predicted instances against ground truth, per class, with COCOeval.

    Steps:

    1. Evaluation regions. With ``regions``, an image listed there keeps only the truth
       and predictions with at least ``min_region_overlap`` of their area inside the union
       of its regions (for masks, that fraction of their pixel centres). Kept objects are
       not clipped. The same rule applies to truth and predictions, so an object and its
       prediction are kept or dropped together unless they straddle a region edge. Images
       not listed in ``regions`` are evaluated whole.
    2. Rasterisation. Each image becomes one COCO image whose canvas is the bounding
       window of its kept objects, offset to the window's top-left level-0 pixel, so a
       100k-pixel slide never becomes a full raster. Each object is rasterised within its
       own bounding box and encoded straight to RLE on that canvas.
    3. COCOeval with categories 1..K in ``class_names`` order, maxDets
       [1, 10, 100, N] where N >= the largest number of predictions in one image. Input
       order does not matter: objects are sorted by image, class, score and mask.
    4. Per class: AP, AP50 and AP75 at cap N. Precision, recall and F1 at IoU 0.5 come from
       COCOeval's own matching at IoU 0.5: predictions in descending score order each
       take the unmatched truth of the same class and image with the highest IoU >= 0.5,
       so matching is one-to-one and greedy. Predictions with score < ``score_threshold``
       are left out of precision, recall and F1 but not of AP.

    Args:
        truth: Ground truth instances; their scores are ignored.
        predictions: Predicted instances, each with a score.
        class_names: Classes to report, in order. Every instance must use one of them.
        regions: Evaluation regions per image id, for partially annotated slides, as
            level-0 polygons.
        min_region_overlap: Fraction of an object inside the regions needed to keep it,
            in (0, 1].
        score_threshold: Minimum score of predictions counted in precision, recall, F1.
        iou_type: "segm" compares masks, "bbox" compares the boxes of the masks.

    Raises:
        EvaluationError: A class is unknown, a prediction has no score, a region is
            invalid, or one image's bounding window exceeds 2**32 - 1 pixels.

    Cost: rasterising takes about 0.2 s per million pixels of object bounding boxes
    (shapely 2.1, one CPU core, measured on a 1000 x 1000 disk). COCOeval's matching
    loops in Python over thresholds x predictions x truths of each image and class, so
    1000 tubules and 1000 predictions in one slide take about 11 s (pycocotools 2.0.11,
    one CPU core, measured).

    NOTE: Per-class numbers would stay the same if each slide were split into groups of
    objects whose boxes do not overlap, which would make large slides much faster. That
    split is not implemented, because it would change what COCO's per-image caps of 1,
    10 and 100 mean in ``coco_stats``.
    """
    class_names = _checked_class_names(class_names)
    _check_instances(truth, "truth", class_names, needs_score=False)
    _check_instances(predictions, "predictions", class_names, needs_score=True)
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"iou_type {iou_type!r} is not supported. Use 'segm' or 'bbox'.")
    if not 0.0 < min_region_overlap <= 1.0:
        raise EvaluationError(
            f"min_region_overlap {min_region_overlap!r} is outside (0, 1]. Pass a fraction "
            "such as 0.5."
        )
    if regions is not None:
        region_by_image = _region_unions(regions)
        truth = _inside_regions(truth, region_by_image, min_region_overlap)
        predictions = _inside_regions(predictions, region_by_image, min_region_overlap)

    category_by_class = {name: number for number, name in enumerate(class_names, start=1)}
    by_image: dict[Hashable, list[tuple[EvaluationInstance, bool]]] = defaultdict(list)
    for instance in truth:
        by_image[instance.image_id].append((instance, True))
    for instance in predictions:
        by_image[instance.image_id].append((instance, False))

    images, truth_rows, result_rows = [], [], []
    for image_number, image_id in enumerate(sorted(by_image, key=_image_sort_key), start=1):
        objects = by_image[image_id]
        window = _bounding_window(image_id, [instance for instance, _ in objects])
        logger.debug(
            "Image %r: canvas %d x %d pixels at level-0 offset (%d, %d)",
            image_id,
            window.width,
            window.height,
            window.x0,
            window.y0,
        )
        images.append({"id": image_number, "height": window.height, "width": window.width})
        for instance, is_truth in objects:
            rle = _instance_rle(instance, window)
            category = category_by_class[instance.class_name]
            score = None if is_truth else float(instance.score)
            row = (image_number, category, rle, score)
            (truth_rows if is_truth else result_rows).append(row)

    # A canonical order makes ties (equal IoU or equal score) independent of input order.
    truth_rows.sort(key=lambda row: (row[0], row[1], row[2]["counts"]))
    result_rows.sort(key=lambda row: (row[0], row[1], -row[3], row[2]["counts"]))

    gt_dataset = {
        "images": images,
        "categories": [{"id": category_by_class[name], "name": name} for name in class_names],
        "annotations": [
            {
                "id": number,
                "image_id": image,
                "category_id": category,
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
            for number, (image, category, rle, _) in enumerate(truth_rows, start=1)
        ],
    }
    results = [
        {"image_id": image, "category_id": category, "segmentation": rle, "score": score}
        for image, category, rle, score in result_rows
    ]
    if iou_type == "bbox":
        for result in results:
            result["bbox"] = mask_utils.toBbox(result["segmentation"]).tolist()
    gt_coco = _coco_from_dataset(gt_dataset)
    return _evaluate_coco(gt_coco, _load_results(gt_coco, results), iou_type, score_threshold)


def evaluate_coco_files(
    gt_json: str | Path,
    dt_json: str | Path,
    iou_type: IouType = "segm",
    *,
    score_threshold: float = 0.0,
) -> EvaluationResult:
    """Evaluate a COCO results file against a COCO ground truth file.

    The ground truth is normalised before evaluation. Annotation ids become 1..N in file
    order, because COCOeval treats a match with annotation id 0 as no match. A missing
    ``iscrowd`` becomes 0 and a boolean one 0 or 1. A missing ``area`` or ``bbox`` is
    computed from the segmentation. Crowd regions keep COCO's meaning, so matches to them
    are ignored. Results given as polygons or uncompressed RLE are encoded to compressed
    RLE. Category and image ids keep their values, including 0.

    NOTE: As in pycocotools' ``COCO.loadRes``, when results carry a ``bbox``, each
    detection's area is the box area even for "segm". Area only decides the small,
    medium and large ranges, so only AP_S/M/L and AR_S/M/L depend on it.

    Args:
        gt_json: COCO ground truth: an object with "images", "annotations" and
            "categories".
        dt_json: COCO results: a list of {"image_id", "category_id", "score",
            "segmentation" or "bbox"}, or an object whose "annotations" is that list.
        iou_type: "segm" or "bbox".
        score_threshold: Minimum score of detections counted in precision, recall and F1.

    Raises:
        EvaluationError: A file is missing, is not JSON, or has an invalid entry.
    """
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"iou_type {iou_type!r} is not supported. Use 'segm' or 'bbox'.")
    gt_coco = _coco_from_dataset(_normalised_truth(_read_json(gt_json), Path(gt_json), iou_type))
    results = _normalised_results(_read_json(dt_json), Path(dt_json), gt_coco, iou_type)
    return _evaluate_coco(gt_coco, _load_results(gt_coco, results), iou_type, score_threshold)


def coco_stats_from_files(
    gt_json: str | Path, dt_json: str | Path, iou_type: IouType = "segm"
) -> list[float]:
    """Compute the twelve numbers of COCOeval.summarize() for a COCO file pair.

    The numbers equal a plain pycocotools run with default parameters (maxDets 1, 10,
    100) whenever the files are valid for it. See ``evaluate_coco_files`` for the input
    normalisation.
    """
    return list(evaluate_coco_files(gt_json, dt_json, iou_type).coco_stats)


# --- COCOeval -----------------------------------------------------------------------


def _evaluate_coco(
    gt_coco: COCO, dt_coco: COCO, iou_type: str, score_threshold: float
) -> EvaluationResult:
    """Run COCOeval once and read per-class AP, precision, recall and F1 from it."""
    detections_per_image = Counter(ann["image_id"] for ann in dt_coco.dataset["annotations"])
    max_detections_in_image = max(detections_per_image.values(), default=0)
    max_dets = list(COCO_MAX_DETECTIONS)
    if max_detections_in_image > max_dets[-1]:
        max_dets.append(max_detections_in_image)

    evaluator = COCOeval(gt_coco, dt_coco, iou_type)
    evaluator.params.maxDets = max_dets
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    logger.debug(
        "COCOeval %s: %d images, %d categories, maxDets %s",
        iou_type,
        len(params.imgIds),
        len(params.catIds),
        max_dets,
    )

    iou_50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    iou_75 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.75))[0])
    all_areas = params.areaRngLbl.index("all")
    # precision has shape [IoU thresholds, recall points, categories, areas, caps].
    precision = evaluator.eval["precision"][:, :, :, all_areas, -1]
    counts = _matches_at_iou(evaluator, iou_50, score_threshold)
    predictions_per_category = Counter(ann["category_id"] for ann in dt_coco.dataset["annotations"])

    per_class = []
    for index, category_id in enumerate(params.catIds):
        n_truth, true_positives, false_positives = counts.get(category_id, (0, 0, 0))
        name = str(gt_coco.cats[category_id].get("name", category_id))
        n_pred = predictions_per_category[category_id]
        if n_truth == 0:
            per_class.append(ClassMetrics(name, 0, n_pred, None, None, None, None, None, None))
            continue
        counted = true_positives + false_positives
        false_negatives = n_truth - true_positives
        per_class.append(
            ClassMetrics(
                class_name=name,
                n_truth=n_truth,
                n_pred=n_pred,
                ap=_mean_precision(precision[:, :, index]),
                ap50=_mean_precision(precision[iou_50, :, index]),
                ap75=_mean_precision(precision[iou_75, :, index]),
                precision=true_positives / counted if counted else 0.0,
                recall=true_positives / n_truth,
                f1=2 * true_positives / (2 * true_positives + false_positives + false_negatives),
            )
        )
    return EvaluationResult(
        iou_type=iou_type,
        per_class=tuple(per_class),
        mean=_mean_metrics(per_class),
        coco_stats=tuple(float(value) for value in evaluator.stats),
        max_detections_per_image=max_dets[-1],
    )


def _matches_at_iou(
    evaluator: COCOeval, iou_index: int, score_threshold: float
) -> dict[int, tuple[int, int, int]]:
    """Count (truth, true positives, false positives) per category at one IoU threshold.

    Reads COCOeval's per-image matching for the "all" area range at the largest cap.
    Crowd truth and detections matched to crowd regions are not counted.
    """
    params = evaluator.params
    all_range = params.areaRng[params.areaRngLbl.index("all")]
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    for image_eval in evaluator.evalImgs:
        if (
            image_eval is None
            or image_eval["aRng"] != all_range
            or image_eval["maxDet"] != params.maxDets[-1]
        ):
            continue
        entry = counts[image_eval["category_id"]]
        entry[0] += int(np.count_nonzero(~np.asarray(image_eval["gtIgnore"], dtype=bool)))
        scores = np.asarray(image_eval["dtScores"], dtype=float)
        if scores.size == 0:
            continue
        matched = np.asarray(image_eval["dtMatches"])[iou_index] > 0
        counted = ~np.asarray(image_eval["dtIgnore"])[iou_index].astype(bool)
        counted &= scores >= score_threshold
        entry[1] += int(np.count_nonzero(matched & counted))
        entry[2] += int(np.count_nonzero(~matched & counted))
    return {category: (n[0], n[1], n[2]) for category, n in counts.items()}


def _mean_precision(values: np.ndarray) -> float | None:
    """Average COCO's precision entries, skipping its -1 for "no ground truth"."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _mean_metrics(per_class: Sequence[ClassMetrics]) -> MeanMetrics:
    """Average each metric over the classes that have ground truth."""
    with_truth = [
        metrics for metrics in per_class if metrics.n_truth > 0 and metrics.ap is not None
    ]

    def mean_of(name: str) -> float | None:
        values = [getattr(metrics, name) for metrics in with_truth]
        return float(np.mean(values)) if values else None

    return MeanMetrics(
        n_classes=len(with_truth),
        ap=mean_of("ap"),
        ap50=mean_of("ap50"),
        ap75=mean_of("ap75"),
        precision=mean_of("precision"),
        recall=mean_of("recall"),
        f1=mean_of("f1"),
    )


def _coco_from_dataset(dataset: dict[str, Any]) -> COCO:
    """Build a pycocotools COCO index from an in-memory dataset, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(gt_coco: COCO, results: list[dict[str, Any]]) -> COCO:
    """Load results with ``COCO.loadRes``, or build an empty result set (loadRes fails)."""
    if not results:
        return _coco_from_dataset(
            {
                "images": list(gt_coco.dataset["images"]),
                "categories": list(gt_coco.dataset["categories"]),
                "annotations": [],
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return gt_coco.loadRes(results)


# --- Instances to RLE ----------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """Canvas of one COCO image: a level-0 pixel rectangle."""

    x0: int
    y0: int
    width: int
    height: int


@dataclass(frozen=True)
class _PixelBox:
    """Level-0 pixels [x0, x1) x [y0, y1) that can contain an object's pixels."""

    x0: int
    y0: int
    x1: int
    y1: int


def _pixel_box(instance: EvaluationInstance) -> _PixelBox:
    if instance.mask is not None:
        x0, y0 = (int(value) for value in instance.mask_origin_level0_xy)
        height, width = np.asarray(instance.mask).shape
        return _PixelBox(x0, y0, x0 + width, y0 + height)
    min_x, min_y, max_x, max_y = instance.geometry_level0.bounds
    return _PixelBox(math.floor(min_x), math.floor(min_y), math.ceil(max_x), math.ceil(max_y))


def _bounding_window(image_id: Hashable, instances: Sequence[EvaluationInstance]) -> _Window:
    """Return the smallest canvas that contains the pixels of all the instances."""
    boxes = [_pixel_box(instance) for instance in instances]
    x0 = min(box.x0 for box in boxes)
    y0 = min(box.y0 for box in boxes)
    width = max(1, max(box.x1 for box in boxes) - x0)
    height = max(1, max(box.y1 for box in boxes) - y0)
    if width * height > MAX_CANVAS_PIXELS:
        raise EvaluationError(
            f"Image {image_id!r}: its objects span {width} x {height} level-0 pixels, more "
            f"than the {MAX_CANVAS_PIXELS} pixels a pycocotools RLE can address. Pass "
            "evaluation regions or split the slide into smaller images."
        )
    return _Window(x0, y0, width, height)


def _local_mask(instance: EvaluationInstance, box: _PixelBox) -> np.ndarray:
    """Rasterise an instance within its pixel box to an (H, W) bool array."""
    if instance.mask is not None:
        return np.asarray(instance.mask).astype(bool)
    geometry = instance.geometry_level0
    shapely.prepare(geometry)
    columns = np.arange(box.x0, box.x1, dtype=float) + 0.5
    rows = np.arange(box.y0, box.y1, dtype=float) + 0.5
    return shapely.contains_xy(geometry, columns[np.newaxis, :], rows[:, np.newaxis])


def _instance_rle(instance: EvaluationInstance, window: _Window) -> dict[str, Any]:
    """Encode an instance as compressed COCO RLE on its image's canvas."""
    box = _pixel_box(instance)
    mask = _local_mask(instance, box)
    if not mask.any():
        logger.warning(
            "Object of class %r in image %r covers no pixel centre, so its area is 0.",
            instance.class_name,
            instance.image_id,
        )
    counts = _rle_counts(mask, box.x0 - window.x0, box.y0 - window.y0, window.height, window.width)
    uncompressed = {"size": [window.height, window.width], "counts": counts}
    return mask_utils.frPyObjects(uncompressed, window.height, window.width)


def _rle_counts(
    mask: np.ndarray, column_offset: int, row_offset: int, height: int, width: int
) -> list[int]:
    """Return COCO's uncompressed RLE counts of a local mask placed on a larger canvas.

    COCO RLE lists alternating runs of 0 and 1 in column-major order, starting with 0.
    The canvas is never allocated. One zero row is padded above and below the local mask,
    so every column's runs of 1 start and end inside it. A change of value at padded row r
    of local column c is at canvas index (column_offset + c) * height + row_offset + r - 1.
    """
    local_height = mask.shape[0]
    padded = np.zeros((local_height + 2, mask.shape[1]), dtype=bool)
    padded[1:-1] = mask
    flat = padded.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    local_columns, padded_rows = np.divmod(changes, local_height + 2)
    positions = (local_columns + column_offset) * height + row_offset + padded_rows - 1
    # A run that ends at the bottom of one canvas column and restarts at the top of the
    # next gives the same position twice. Removing both merges the two runs.
    positions, repeats = np.unique(positions, return_counts=True)
    positions = positions[repeats % 2 == 1]
    boundaries = np.concatenate([[0], positions, [height * width]])
    counts = np.diff(boundaries).astype(np.int64).tolist()
    # Only the first run (zeros) may be empty. A mask that reaches the canvas's last
    # pixel would otherwise end with an empty run of zeros.
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()
    return counts


# --- Input checks and evaluation regions ---------------------------------------------


def _checked_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise EvaluationError(
            f"class_names {names!r} must be a non-empty list of non-empty strings."
        )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise EvaluationError(f"class_names lists {duplicates} more than once. List each once.")
    return names


def _check_instances(
    instances: Sequence[EvaluationInstance], role: str, class_names: list[str], needs_score: bool
) -> None:
    known = set(class_names)
    for index, instance in enumerate(instances):
        if not isinstance(instance, EvaluationInstance):
            raise EvaluationError(
                f"{role}[{index}] is a {type(instance).__name__}, expected an "
                "EvaluationInstance."
            )
        if instance.class_name not in known:
            raise EvaluationError(
                f"{role}[{index}] has class {instance.class_name!r}, which is not in "
                f"class_names {class_names}. Add the class or leave the instance out."
            )
        if needs_score and instance.score is None:
            raise EvaluationError(
                f"{role}[{index}] (image {instance.image_id!r}) has no score. Every "
                "prediction needs a confidence score for AP."
            )


def _region_unions(
    regions: Mapping[Hashable, Polygon | MultiPolygon | Sequence[Polygon | MultiPolygon]],
) -> dict[Hashable, Polygon | MultiPolygon]:
    unions = {}
    for image_id, value in regions.items():
        parts = [value] if isinstance(value, (Polygon, MultiPolygon)) else list(value)
        for part in parts:
            if not isinstance(part, (Polygon, MultiPolygon)) or part.is_empty or not part.is_valid:
                raise EvaluationError(
                    f"Evaluation region of image {image_id!r} is not a valid, non-empty "
                    f"Polygon or MultiPolygon ({type(part).__name__}). Repair it with "
                    "ml.polygons.make_valid_polygons."
                )
        union = shapely.union_all(parts) if parts else Polygon()
        shapely.prepare(union)
        unions[image_id] = union
    return unions


def _inside_regions(
    instances: Sequence[EvaluationInstance],
    region_by_image: dict[Hashable, Polygon | MultiPolygon],
    min_overlap: float,
) -> list[EvaluationInstance]:
    kept = []
    for instance in instances:
        region = region_by_image.get(instance.image_id)
        if region is None or _fraction_inside(instance, region) >= min_overlap:
            kept.append(instance)
    return kept


def _fraction_inside(instance: EvaluationInstance, region: Polygon | MultiPolygon) -> float:
    """Return the fraction of an instance's area (or mask pixel centres) inside a region."""
    if region.is_empty:
        return 0.0
    if instance.mask is None:
        geometry = instance.geometry_level0
        return float(geometry.intersection(region).area / geometry.area)
    rows, columns = np.nonzero(np.asarray(instance.mask))
    x0, y0 = instance.mask_origin_level0_xy
    inside = shapely.contains_xy(region, columns + x0 + 0.5, rows + y0 + 0.5)
    return float(inside.mean())


def _image_sort_key(image_id: Hashable) -> tuple[str, str]:
    return (type(image_id).__name__, str(image_id))


# --- COCO files ----------------------------------------------------------------------


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise EvaluationError(
            f"COCO file {path} cannot be read ({exc.strerror or exc}). Check the path."
        ) from exc
    except UnicodeDecodeError as exc:
        raise EvaluationError(f"COCO file {path} is not UTF-8 text. Export it again.") from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EvaluationError(
            f"COCO file {path} is not valid JSON ({exc}). The file may be truncated."
        ) from exc


def _normalised_truth(data: Any, path: Path, iou_type: str) -> dict[str, Any]:
    """Check a COCO ground truth dataset and return a normalised copy."""
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise EvaluationError(
            f"COCO ground truth {path} needs an object with the lists \"images\", "
            "\"annotations\" and \"categories\"."
        )
    images = {image.get("id"): image for image in data["images"] if isinstance(image, dict)}
    categories = {cat.get("id") for cat in data["categories"] if isinstance(cat, dict)}
    annotations = []
    for index, ann in enumerate(data["annotations"]):
        where = f"COCO ground truth {path}, annotation {index}"
        if not isinstance(ann, dict):
            raise EvaluationError(f"{where} is not an object.")
        if ann.get("image_id") not in images:
            raise EvaluationError(f"{where} has image_id {ann.get('image_id')!r}, not in images.")
        if ann.get("category_id") not in categories:
            raise EvaluationError(
                f"{where} has category_id {ann.get('category_id')!r}, not in categories."
            )
        shape_key = "segmentation" if iou_type == "segm" else "bbox"
        if not ann.get(shape_key) and not ann.get("segmentation"):
            raise EvaluationError(f"{where} has no {shape_key!r}, which {iou_type} needs.")
        if ann.get("segmentation") and "height" not in images[ann["image_id"]]:
            raise EvaluationError(
                f"{where}: image {ann['image_id']!r} has no height and width, which "
                "decoding the segmentation needs."
            )
        normalised = dict(ann)
        normalised["id"] = index + 1
        normalised["iscrowd"] = 1 if ann.get("iscrowd") else 0
        annotations.append(normalised)
    dataset = dict(data)
    dataset["annotations"] = annotations

    # Fill a missing area or bbox from the segmentation, which needs the image index.
    incomplete = [ann for ann in annotations if "area" not in ann or "bbox" not in ann]
    if incomplete:
        coco = _coco_from_dataset(dataset)
        for ann in incomplete:
            rle = coco.annToRLE(ann)
            ann.setdefault("area", float(mask_utils.area(rle)))
            ann.setdefault("bbox", mask_utils.toBbox(rle).tolist())
    return dataset


def _normalised_results(data: Any, path: Path, gt_coco: COCO, iou_type: str) -> list[dict]:
    """Check COCO results and return copies with every segmentation as compressed RLE."""
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise EvaluationError(
            f"COCO results {path} must be a list of detections (or an object with an "
            "\"annotations\" list)."
        )
    results = []
    for index, result in enumerate(data):
        where = f"COCO results {path}, detection {index}"
        if not isinstance(result, dict):
            raise EvaluationError(f"{where} is not an object.")
        image_id = result.get("image_id")
        if image_id not in gt_coco.imgs:
            raise EvaluationError(
                f"{where} has image_id {image_id!r}, which the ground truth does not list."
            )
        if result.get("category_id") not in gt_coco.cats:
            raise EvaluationError(
                f"{where} has category_id {result.get('category_id')!r}, which the ground "
                "truth does not list."
            )
        score = result.get("score")
        if (
            isinstance(score, bool)
            or not isinstance(score, (int, float))
            or not math.isfinite(score)
        ):
            raise EvaluationError(f"{where} has score {score!r}. Expected a finite number.")
        if iou_type == "segm" and not result.get("segmentation"):
            raise EvaluationError(
                f"{where} has no segmentation. Evaluate box-only results with iou_type 'bbox'."
            )
        if not result.get("segmentation") and not result.get("bbox"):
            raise EvaluationError(f"{where} has neither a segmentation nor a bbox.")
        normalised = {key: value for key, value in result.items() if key not in ("id", "iscrowd")}
        if normalised.get("segmentation"):
            image = gt_coco.imgs[image_id]
            normalised["segmentation"] = _compressed_rle(
                normalised["segmentation"], image["height"], image["width"], where
            )
        results.append(normalised)

    # COCO.loadRes takes every detection's area from its bbox if the first one has a bbox.
    with_box = {bool(result.get("bbox")) for result in results}
    if len(with_box) > 1:
        raise EvaluationError(
            f"COCO results {path} give a bbox for some detections only. Give it for all "
            "or for none."
        )
    return results


def _compressed_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """Encode a polygon list, uncompressed RLE or compressed RLE as one compressed RLE."""
    try:
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
            return segmentation
    except (TypeError, ValueError, IndexError) as exc:
        raise EvaluationError(
            f"{where} has a segmentation that cannot be decoded ({exc})."
        ) from exc
    raise EvaluationError(
        f"{where} has a segmentation of type {type(segmentation).__name__}. Expected a "
        "polygon list or an RLE object with \"size\" and \"counts\"."
    )
