"""Model evaluations: per-class COCO metrics of a model version against reviewed annotations.

A slide is evaluable for a version when it has at least one evaluation region and a
latest succeeded segmentation run of the version with a stored predictions file. Truth
is the accepted and edited instances of the version's trainable classes on those slides,
predictions are the run's stored predictions, and only objects with at least half of
their area inside the slide's evaluation regions are scored. ``ml.evaluation`` does the
matching and the metrics with pycocotools.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field

import shapely
from django.db import transaction
from django.utils import timezone
from shapely.geometry import MultiPolygon, shape
from shapely.geometry.base import BaseGeometry

from apps.accounts import audit
from apps.annotations.models import EvaluationRegion, Instance, ProposalRun
from apps.training.models import ModelVersion, SnapshotInstance
from apps.training.snapshots import trainable_class_names
from ml.errors import NephrowebError
from ml.evaluation import EvaluationInstance, evaluate_instances
from ml.polygons import make_valid_polygons
from nephroweb.leases import acquire_lease, new_owner_id, release_lease, renewing_lease

from .models import ModelEvaluation
from .predictions import load_run_predictions, latest_segmentation_run

logger = logging.getLogger(__name__)

BACKGROUND_CLASS = "background"
TRUTH_STATES = (Instance.ReviewState.ACCEPTED, Instance.ReviewState.EDITED)
# An object counts when at least this fraction of its area lies inside the regions.
MIN_REGION_OVERLAP = 0.5

LEAKAGE_WARNING = (
    "{trained} of {scored} scored annotations were training data for this version; "
    "its scores overstate how it does on new slides."
)


class ModelEvaluationError(NephrowebError, ValueError):
    """A model version cannot be evaluated now. The message names the step to take first."""


@dataclass
class EvaluationInputs:
    """Truth, runs and regions of one evaluation of a model version, read from the database."""

    model_version: ModelVersion
    class_names: list[str]
    runs_by_slide: dict[int, ProposalRun]
    truth: list[Instance]
    regions: list[EvaluationRegion]
    inputs_key: str
    slide_names: dict[int, str] = field(default_factory=dict)


def scored_class_names(model_version: ModelVersion) -> list[str]:
    """Return the version's classes without background, in the version's order."""
    return [name for name in model_version.class_names if name != BACKGROUND_CLASS]


def slides_with_regions() -> list[int]:
    """Return the ids of slides with at least one evaluation region, in id order."""
    return sorted(set(EvaluationRegion.objects.values_list("slide_id", flat=True)))


def evaluable_runs(model_version: ModelVersion) -> dict[int, ProposalRun]:
    """Map each evaluable slide's id to the version's latest succeeded run on it.

    A slide counts when it has an evaluation region and its latest succeeded
    segmentation run of the version stored a predictions file.
    """
    runs = {}
    for slide_id in slides_with_regions():
        run = latest_segmentation_run(slide_id, model_version)
        if run is not None and run.predictions_file:
            runs[slide_id] = run
    return runs


def check_evaluable(model_version: ModelVersion) -> dict[int, ProposalRun]:
    """Return the evaluable runs by slide id, or raise saying why there are none.

    Raises:
        ModelEvaluationError: The version did not succeed, no slide has evaluation
            regions, or none of those slides was segmented by the version.
    """
    if model_version.status != ModelVersion.Status.SUCCEEDED:
        raise ModelEvaluationError(
            f"Model version {model_version.pk} ({model_version.name}) has status "
            f"{str(model_version.status)!r}. Only a version whose training succeeded can be "
            "evaluated."
        )
    if not slides_with_regions():
        raise ModelEvaluationError(
            "No slide has evaluation regions, so there is nothing to score. Mark evaluation "
            "regions on reviewed slides first."
        )
    runs = evaluable_runs(model_version)
    if not runs:
        raise ModelEvaluationError(
            f"None of the slides with evaluation regions has a segmentation run of model "
            f"version {model_version.pk} ({model_version.name}) with stored predictions. "
            "Segment them with this version, or use --segment."
        )
    return runs


def collect_inputs(model_version: ModelVersion) -> EvaluationInputs:
    """Read the truth, runs and regions an evaluation of ``model_version`` uses now."""
    runs_by_slide = check_evaluable(model_version)
    class_names = scored_class_names(model_version)
    truth = list(truth_queryset(runs_by_slide, class_names))
    regions = list(EvaluationRegion.objects.filter(slide_id__in=runs_by_slide).order_by("id"))
    slide_names = {run.slide_id: run.slide.name for run in runs_by_slide.values()}
    truth_keys = [
        (instance.pk, instance.version, instance.review_state, instance.class_name)
        for instance in truth
    ]
    return EvaluationInputs(
        model_version=model_version,
        class_names=class_names,
        runs_by_slide=runs_by_slide,
        truth=truth,
        regions=regions,
        inputs_key=inputs_key(class_names, truth_keys, runs_by_slide.values(), regions),
        slide_names=slide_names,
    )


def truth_queryset(slide_ids, class_names):
    """Return the accepted and edited instances of trainable scored classes on the slides."""
    trainable = set(trainable_class_names())
    truth_classes = [name for name in class_names if name in trainable]
    return Instance.objects.filter(
        slide_id__in=slide_ids, review_state__in=TRUTH_STATES, class_name__in=truth_classes,
    ).order_by("id")


def inputs_key(class_names, truth_keys, runs, regions) -> str:
    """Return the SHA-256 of what an evaluation reads, so a changed input marks it stale.

    ``truth_keys`` are (id, version, review_state, class_name) of the truth instances. An
    outline edit raises the instance's version, so the geometry itself is not hashed.
    """
    payload = {
        "classes": list(class_names),
        "truth": sorted([list(key) for key in truth_keys]),
        "runs": [[run.pk, run.predictions_file] for run in sorted(runs, key=lambda run: run.pk)],
        "regions": [
            [region.pk, region.geometry] for region in sorted(regions, key=lambda region: region.pk)
        ],
    }
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def current_inputs_key(model_version: ModelVersion) -> str:
    """Return the inputs key an evaluation would have now, or "" when none is possible.

    Reads only the truth's ids, versions, states and classes, not their outlines.
    """
    try:
        runs_by_slide = check_evaluable(model_version)
    except ModelEvaluationError:
        return ""
    class_names = scored_class_names(model_version)
    truth_keys = truth_queryset(runs_by_slide, class_names).values_list(
        "id", "version", "review_state", "class_name"
    )
    regions = EvaluationRegion.objects.filter(slide_id__in=runs_by_slide).order_by("id")
    return inputs_key(class_names, truth_keys, runs_by_slide.values(), regions)


def is_stale(evaluation: ModelEvaluation, current_key: str | None = None) -> bool:
    """Tell whether the truth, runs or regions changed since ``evaluation`` was computed."""
    if current_key is None:
        current_key = current_inputs_key(evaluation.model_version)
    return evaluation.inputs_key != current_key


def leakage_counts(evaluation: ModelEvaluation) -> tuple[int, int]:
    """Return (scored truth the version trained on, all scored truth) over the slides."""
    trained = sum(row.get("trained_on", 0) for row in evaluation.slides)
    scored = sum(row.get("truth", 0) for row in evaluation.slides)
    return trained, scored


def leakage_warning(evaluation: ModelEvaluation) -> str:
    """Return the warning about scored annotations the version trained on, or ""."""
    trained, scored = leakage_counts(evaluation)
    if trained == 0:
        return ""
    return LEAKAGE_WARNING.format(trained=trained, scored=scored)


def format_metric(value: float | None) -> str:
    """Format a metric as shown on the page and in the command's summary: 3 decimals or n/a."""
    return "n/a" if value is None else f"{value:.3f}"


# --- Running ------------------------------------------------------------------------


def run_evaluation(model_version: ModelVersion, *, user=None) -> ModelEvaluation:
    """Evaluate ``model_version`` in this process and return the stored evaluation.

    Raises:
        ModelEvaluationError: Nothing can be evaluated (see ``check_evaluable``). A
            failure during scoring is stored on the returned row instead.
    """
    check_evaluable(model_version)
    with transaction.atomic():
        evaluation = ModelEvaluation.objects.create(model_version=model_version, created_by=user)
        _record_evaluation(evaluation, user)
    return execute_evaluation(evaluation.pk)


def start_evaluation(model_version: ModelVersion, *, user) -> ModelEvaluation:
    """Create a queued evaluation and enqueue its task once the row is committed.

    Raises:
        ModelEvaluationError: Nothing can be evaluated (see ``check_evaluable``).
    """
    from .tasks import run_evaluation as run_evaluation_task

    check_evaluable(model_version)
    with transaction.atomic():
        evaluation = ModelEvaluation.objects.create(model_version=model_version, created_by=user)
        _record_evaluation(evaluation, user)
        transaction.on_commit(lambda: run_evaluation_task.delay(evaluation.pk))
    logger.info(
        "Queued evaluation %s of model version %s", evaluation.pk, model_version.pk
    )
    return evaluation


def _record_evaluation(evaluation: ModelEvaluation, user) -> None:
    version = evaluation.model_version
    audit.record(
        audit.Action.EVALUATE, user=user, target_type=audit.Target.MODEL_EVALUATION,
        target_id=evaluation.pk,
        detail={"model_version": version.pk, "model_version_name": version.name},
    )


def execute_evaluation(evaluation_id: int, *, owner: str = "") -> ModelEvaluation | None:
    """Compute and store a queued evaluation. A finished one is returned unchanged.

    The computation holds the row's lease, so two deliveries of one task never compute
    at once. Returns None when another ``owner`` holds the lease. A failure is stored on
    the row with a message naming the problem, so a re-delivered task never computes a
    finished evaluation twice.
    """
    evaluations = ModelEvaluation.objects.select_related("model_version")
    evaluations.get(pk=evaluation_id)  # raises DoesNotExist before any lease is taken
    owner = owner or new_owner_id()
    if not acquire_lease(ModelEvaluation, evaluation_id, owner):
        logger.info("Evaluation %s is held by another worker; skipping", evaluation_id)
        return None
    try:
        # Read under the lease, so a delivery that waited for another never recomputes.
        evaluation = evaluations.get(pk=evaluation_id)
        if evaluation.status in (ModelEvaluation.Status.SUCCEEDED, ModelEvaluation.Status.FAILED):
            logger.info(
                "Evaluation %s already %s; nothing to do", evaluation_id, evaluation.status
            )
            return evaluation
        with renewing_lease(ModelEvaluation, evaluation_id, owner):
            return _compute_evaluation(evaluation)
    finally:
        release_lease(ModelEvaluation, evaluation_id, owner)


def _compute_evaluation(evaluation: ModelEvaluation) -> ModelEvaluation:
    evaluation_id = evaluation.pk
    evaluation.status = ModelEvaluation.Status.RUNNING
    evaluation.message = ""
    evaluation.save(update_fields=["status", "message"])
    logger.info(
        "Evaluating model version %s (evaluation %s)", evaluation.model_version_id, evaluation_id
    )
    try:
        inputs = collect_inputs(evaluation.model_version)
        metrics, slides = score(inputs)
    except NephrowebError as error:
        logger.warning("Evaluation %s failed: %s", evaluation_id, error)
        return _finish(evaluation, ModelEvaluation.Status.FAILED, message=str(error))
    except Exception as error:  # noqa: BLE001  stored for the page, logged with its traceback
        logger.exception("Evaluation %s failed", evaluation_id)
        return _finish(
            evaluation, ModelEvaluation.Status.FAILED,
            message=f"Internal error ({type(error).__name__}); the worker log has the details.",
        )
    evaluation.inputs_key = inputs.inputs_key
    evaluation.metrics = metrics
    evaluation.slides = slides
    finished = _finish(evaluation, ModelEvaluation.Status.SUCCEEDED)
    logger.info(
        "Evaluation %s of model version %s succeeded: %d slides, mean AP %s",
        evaluation_id, evaluation.model_version_id, len(slides), metrics["mean"]["ap"],
    )
    return finished


def _finish(evaluation: ModelEvaluation, status: str, *, message: str = "") -> ModelEvaluation:
    evaluation.status = status
    evaluation.message = message
    evaluation.finished_at = timezone.now()
    evaluation.save()
    return evaluation


# --- Scoring ------------------------------------------------------------------------


def score(inputs: EvaluationInputs) -> tuple[dict, list[dict]]:
    """Score the inputs and return (EvaluationResult.to_dict(), one summary per slide).

    Raises:
        ModelEvaluationError: A predictions file has a class the version does not have.
        PredictionsFileError: A run's predictions file is missing or damaged.
        EvaluationError: A geometry or class cannot be evaluated.
    """
    region_by_slide = _region_unions(inputs.regions)
    truth, truth_ids = [], []
    for instance in inputs.truth:
        geometry = _polygonal(shape(instance.geometry))
        if geometry is None:
            logger.warning("Instance %s has no area after repair; not scored", instance.pk)
            continue
        if _inside(geometry, region_by_slide[instance.slide_id]):
            truth.append(EvaluationInstance(instance.slide_id, instance.class_name, geometry))
            truth_ids.append(instance.pk)

    scored = set(inputs.class_names)
    predictions = []
    for slide_id, run in inputs.runs_by_slide.items():
        for prediction in load_run_predictions(run):
            if prediction.class_name == BACKGROUND_CLASS:
                continue
            geometry = _polygonal(prediction.geometry_level0)
            if geometry is None or not _inside(geometry, region_by_slide[slide_id]):
                continue
            if prediction.class_name not in scored:
                raise ModelEvaluationError(
                    f"The predictions file of run {run.pk} ({run.predictions_file}) has class "
                    f"{prediction.class_name!r}, which model version "
                    f"{inputs.model_version.pk} does not have. Segment the slide again."
                )
            predictions.append(EvaluationInstance(
                slide_id, prediction.class_name, geometry, score=prediction.score
            ))

    result = evaluate_instances(
        truth, predictions, inputs.class_names,
        regions={slide_id: [union] for slide_id, union in region_by_slide.items()},
        min_region_overlap=MIN_REGION_OVERLAP,
    )
    trained_ids = set(
        SnapshotInstance.objects.filter(
            snapshot_id=inputs.model_version.snapshot_id, split=SnapshotInstance.Split.TRAIN,
            instance_ref__in=truth_ids,
        ).values_list("instance_ref", flat=True)
    )
    return result.to_dict(), _slide_summaries(inputs, truth, truth_ids, predictions, trained_ids)


def _slide_summaries(inputs, truth, truth_ids, predictions, trained_ids) -> list[dict]:
    truth_per_slide = Counter(instance.image_id for instance in truth)
    predictions_per_slide = Counter(instance.image_id for instance in predictions)
    trained_per_slide = Counter(
        instance.image_id
        for instance, instance_id in zip(truth, truth_ids, strict=True)
        if instance_id in trained_ids
    )
    return [
        {
            "id": slide_id,
            "name": inputs.slide_names.get(slide_id, ""),
            "run_id": run.pk,
            "truth": truth_per_slide[slide_id],
            "predictions": predictions_per_slide[slide_id],
            "trained_on": trained_per_slide[slide_id],
        }
        for slide_id, run in sorted(inputs.runs_by_slide.items())
    ]


def _region_unions(regions: list[EvaluationRegion]) -> dict[int, BaseGeometry]:
    parts_by_slide: dict[int, list] = {}
    for region in regions:
        parts = make_valid_polygons(shape(region.geometry))
        parts_by_slide.setdefault(region.slide_id, []).extend(parts)
    unions = {}
    for slide_id, parts in parts_by_slide.items():
        union = _polygonal(shapely.union_all(parts)) if parts else None
        if union is None:
            raise ModelEvaluationError(
                f"The evaluation regions of slide {slide_id} have no area. Draw them again."
            )
        unions[slide_id] = union
    return unions


def _polygonal(geometry: BaseGeometry):
    """Return a valid Polygon or MultiPolygon of the geometry's areal parts, or None."""
    parts = make_valid_polygons(geometry)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    merged = shapely.union_all(parts)
    return merged if merged.geom_type == "Polygon" else MultiPolygon(list(merged.geoms))


def _inside(geometry: BaseGeometry, region: BaseGeometry) -> bool:
    """Apply evaluate_instances' region rule, so the per-slide counts match what it scores."""
    return float(geometry.intersection(region).area / geometry.area) >= MIN_REGION_OVERLAP
