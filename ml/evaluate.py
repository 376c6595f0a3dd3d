"""Command line: evaluate predicted instances against ground truth and print JSON.

Usage::

    python -m ml.evaluate --truth GT --pred PRED [--iou-type segm|bbox]

Both files are COCO, or both are annotation files of one slide:

- COCO: GT is a COCO dataset ("images", "annotations", "categories"), PRED a COCO
  results list (or an object whose "annotations" is that list).
- GeoJSON, or any other format ``ml.annotation_files.read_annotation_file`` reads: the
  class of each object is its QuPath ``classification`` (or ``label``, ``group``,
  ``name``). A prediction's score is the number under ``--score-key`` (default "score")
  in the feature's ``properties``, or else in ``properties.measurements``. Unclassified
  objects are skipped and counted in the output. ``--regions`` names an annotation file
  whose polygons are the evaluation regions of the slide.

Standard output is one JSON object: per class AP, AP50, AP75, precision, recall, F1,
n_truth and n_pred, their mean over classes with ground truth, and COCO's twelve
standard numbers (null where COCO writes -1). Exit status: 0 on success, 2 for a usage
error, 1 when an input file is missing or cannot be read as expected.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.errors import NephrowebError

logger = logging.getLogger(__name__)

# One slide per GeoJSON pair, so all its objects share this image id.
SLIDE_IMAGE_ID = "slide"


class _UsageError(Exception):
    """Options that cannot be combined; reported with exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        report = _evaluate(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except NephrowebError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml.evaluate",
        description=(
            "Evaluate predicted instances against ground truth: per-class COCO AP over "
            "IoU 0.50:0.05:0.95, AP50, AP75 and precision, recall and F1 at IoU 0.5."
        ),
    )
    parser.add_argument("--truth", required=True, type=Path, help="ground truth file")
    parser.add_argument("--pred", required=True, type=Path, help="predictions file")
    parser.add_argument(
        "--iou-type",
        choices=("segm", "bbox"),
        default="segm",
        help="compare masks (segm, default) or bounding boxes (bbox)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        help="minimum score of predictions counted in precision, recall and F1 (default 0)",
    )
    parser.add_argument(
        "--score-key",
        default="score",
        help="annotation files only: property or measurement that contains a prediction's "
        "score (default 'score')",
    )
    parser.add_argument(
        "--regions",
        type=Path,
        help="annotation files only: file whose polygons are the evaluation regions",
    )
    parser.add_argument(
        "--min-region-overlap",
        type=float,
        default=0.5,
        help="fraction of an object's area inside the regions needed to keep it (default 0.5)",
    )
    return parser


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the files named on the command line and return the JSON report."""
    from ml import evaluation

    truth_kind = _file_kind(args.truth)
    pred_kind = _file_kind(args.pred)
    if not 0.0 < args.min_region_overlap <= 1.0:
        raise _UsageError(f"--min-region-overlap {args.min_region_overlap} is outside (0, 1].")

    if truth_kind == "coco_dataset":
        if pred_kind not in ("coco_results", "coco_dataset"):
            raise _UsageError(
                f"--truth {args.truth} is COCO JSON but --pred {args.pred} is not a COCO "
                "results list. Give both files as COCO or both as GeoJSON."
            )
        if args.regions is not None:
            raise _UsageError("--regions works with annotation files only, not with COCO.")
        result = evaluation.evaluate_coco_files(
            args.truth, args.pred, args.iou_type, score_threshold=args.score_threshold
        )
        return {"format": "coco", "truth": str(args.truth), "pred": str(args.pred)} | (
            result.to_dict()
        )

    if pred_kind != "annotations":
        raise _UsageError(
            f"--pred {args.pred} is COCO JSON but --truth {args.truth} is an annotation "
            "file. Give both files as COCO or both as GeoJSON."
        )
    return _evaluate_annotation_files(args)


def _file_kind(path: Path) -> str:
    """Classify a file as "coco_dataset", "coco_results" or "annotations" by its content."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        from ml.evaluation import EvaluationError

        raise EvaluationError(
            f"Input file {path} cannot be read ({exc.strerror or exc}). Check the path."
        ) from exc
    try:
        document = json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if path.suffix.lower() in (".json", ".geojson"):
            from ml.evaluation import EvaluationError

            raise EvaluationError(f"Input file {path} is not valid JSON: {exc}.") from exc
        # Not JSON: an XML annotation file, or a broken file that the reader reports.
        return "annotations"
    if isinstance(document, dict) and "images" in document and "annotations" in document:
        return "coco_dataset"
    if isinstance(document, dict) and "type" not in document and "annotations" in document:
        return "coco_results"
    if isinstance(document, list) and document and isinstance(document[0], dict):
        if "image_id" in document[0]:
            return "coco_results"
    return "annotations"


def _evaluate_annotation_files(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate one slide's truth and prediction annotation files."""
    from ml.annotation_files import read_annotation_file
    from ml.evaluation import EvaluationError, EvaluationInstance, evaluate_instances

    truth_file = read_annotation_file(args.truth)
    pred_file = read_annotation_file(args.pred)
    unclassified = {"truth": 0, "pred": 0}
    truth, predictions = [], []
    for role, annotation_file, instances in (
        ("truth", truth_file, truth),
        ("pred", pred_file, predictions),
    ):
        if annotation_file.skipped:
            logger.warning(
                "%s: %d objects skipped, first: object %d, %s",
                annotation_file.path,
                len(annotation_file.skipped),
                annotation_file.skipped[0].index,
                annotation_file.skipped[0].reason,
            )
        for obj in annotation_file.objects:
            if obj.class_name is None:
                unclassified[role] += 1
                continue
            score = _score(obj, args.score_key, annotation_file.path) if role == "pred" else None
            instances.append(
                EvaluationInstance(SLIDE_IMAGE_ID, obj.class_name, obj.geometry_level0, score=score)
            )
    for role, count in unclassified.items():
        if count:
            logger.warning("%d unclassified %s objects skipped.", count, role)

    regions = None
    if args.regions is not None:
        region_objects = read_annotation_file(args.regions).objects
        if not region_objects:
            raise EvaluationError(
                f"Regions file {args.regions} contains no polygons. Give a file with at "
                "least one evaluation region, or leave out --regions."
            )
        regions = {SLIDE_IMAGE_ID: [obj.geometry_level0 for obj in region_objects]}

    # Classes in order of first appearance, truth before predictions.
    class_names = list(dict.fromkeys(obj.class_name for obj in [*truth, *predictions]))
    if not class_names:
        raise EvaluationError(
            f"Neither {args.truth} nor {args.pred} contains a classified polygon, so there "
            "is nothing to evaluate. Give each object a classification."
        )
    result = evaluate_instances(
        truth,
        predictions,
        class_names,
        regions,
        min_region_overlap=args.min_region_overlap,
        score_threshold=args.score_threshold,
        iou_type=args.iou_type,
    )
    header = {
        "format": "annotations",
        "truth": str(args.truth),
        "pred": str(args.pred),
        "unclassified_skipped": unclassified,
    }
    return header | result.to_dict()


def _score(obj: Any, score_key: str, path: Path) -> float:
    """Return a prediction's score from its properties, or else from its measurements."""
    from ml.evaluation import EvaluationError

    value = obj.properties.get(score_key, obj.measurements.get(score_key))
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise EvaluationError(
            f"Prediction file {path}, object {obj.index}: no finite number {score_key!r} in "
            f"properties or measurements (found {value!r}). Store each prediction's "
            "confidence there, or name its key with --score-key."
        )
    return float(value)


if __name__ == "__main__":
    sys.exit(main())
