"""Clinical read-outs of one slide: counts, densities, IFTA, glomerulosclerosis, Banff ci/ct.

A read-out measures one source of outlines:

- ``reviewed``: the slide's accepted and edited instances.
- ``model``: every prediction in the stored predictions file of the latest succeeded
  segmentation run of one model version on the slide.
- ``combined``: the reviewed instances plus the model's predictions that do not overlap a
  reviewed instance (accepted, edited or rejected) by half the smaller area or more.

The cortex is the union of the accepted and edited "cortex" instances for every source,
because models do not predict cortex. Without one it is the slide's tissue mask.

Rows are stored in ``SlideReadout`` with ``inputs_key``, a SHA-256 over everything the
numbers depend on. ``current_readout`` returns the stored row while the key matches and
recomputes it otherwise, so a review change shows up on the next read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

from django.conf import settings
from shapely import STRtree
from shapely.geometry import MultiPolygon, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from apps.analysis.models import SlideReadout
from apps.analysis.predictions import (
    PredictionsFileError,
    latest_segmentation_run,
    load_run_predictions,
)
from apps.annotations.classes import CORTEX_CLASS, configured_classes
from apps.annotations.models import Instance, ProposalRun
from apps.annotations.services import overlaps_any
from apps.training.models import ModelVersion
from ml import clinical
from ml.errors import NephrowebError
from ml.polygons import make_valid_polygons

logger = logging.getLogger(__name__)

Source = SlideReadout.Source
State = Instance.ReviewState

BACKGROUND_CLASS = "background"
ATROPHIC_TUBULE_CLASS = "atrophic tubule"
GLOMERULUS_CLASS = "glomerulus"
SCLEROTIC_GLOMERULUS_CLASS = "sclerotic glomerulus"
CORTEX_FROM_ANNOTATION = "cortex annotation"
CORTEX_FROM_TISSUE_MASK = "tissue mask"
REVIEWED_STATES = (State.ACCEPTED, State.EDITED)


class ReadoutUnavailable(NephrowebError, ValueError):
    """A read-out that cannot be computed, with a message for the user."""


@dataclass(frozen=True, eq=False)
class ReviewedInstance:
    """One non-pending instance of the slide, as read once for both the key and the numbers.

    ``geometry`` is the stored GeoJSON in level-0 pixels. It is parsed only when the
    read-out is recomputed, because a current read-out needs the key alone.
    """

    id: int
    version: int
    review_state: str
    class_name: str
    geometry: dict

    @property
    def geometry_level0(self) -> BaseGeometry:
        return shape(self.geometry)


@dataclass(frozen=True)
class ReadoutValues:
    """The numbers of one read-out, before they are stored."""

    counts: dict
    densities_per_mm2: dict
    cortex_source: str
    cortex_area_um2: float
    ifta_pct: float | None
    ifta_area_um2: float
    ifta_regions: dict
    ifta_clusters: list
    glomeruli_count: int
    sclerotic_count: int
    glomerulosclerosis_pct: float | None
    banff_ci: int | None
    banff_ct: int | None
    settings: dict
    message: str


def readout_label(source: str, model_version: ModelVersion | None = None) -> str:
    """Name a source for users: "Reviewed annotations", "Model NAME", "Reviewed + model NAME"."""
    if source == Source.REVIEWED:
        return "Reviewed annotations"
    name = model_version.name if model_version is not None else "?"
    if source == Source.MODEL:
        return f"Model {name}"
    return f"Reviewed + model {name}"


def current_readout(slide, source: str, model_version: ModelVersion | None = None) -> SlideReadout:
    """Return the slide's stored read-out of ``source``, recomputed first if its inputs changed.

    Raises:
        ReadoutUnavailable: ``source`` is unknown, a model source has no ``model_version``,
            the version has no succeeded segmentation run on the slide, or the run's
            predictions file is missing or unreadable.
    """
    _check_source(source, model_version)
    instances = _non_pending_instances(slide)
    run = None
    if source != Source.REVIEWED:
        run = latest_segmentation_run(slide, model_version)
        if run is None:
            raise ReadoutUnavailable(
                f"Model version {model_version.name!r} (#{model_version.pk}) has no succeeded "
                f"segmentation run on slide {slide.name!r} (#{slide.pk}). Segment the slide "
                "with this version first."
            )
    inputs_key = _inputs_key(slide, source, instances, run)

    stored = _stored_readout(slide, source, model_version)
    if stored is not None and stored.inputs_key == inputs_key:
        return stored

    # Limitation: recomputing runs inside the caller's request. One concave-hull cluster of
    # 10 000 atrophic tubules plus 10 000 other outlines took 6 s (2 shared CPU cores).
    predictions = []
    if run is not None:
        try:
            predictions = load_run_predictions(run)
        except PredictionsFileError as error:
            raise ReadoutUnavailable(str(error)) from error
    outlines = _outlines(source, instances, predictions)
    values = _measure(slide, outlines, _cortex_level0(slide, instances))
    logger.info(
        "Read-out of slide %s, source %s, model version %s: IFTA %s %%, %d outlines",
        slide.pk, source, getattr(model_version, "pk", None), values.ifta_pct, len(outlines),
    )
    return _save(slide, source, model_version, run, inputs_key, values)


def slide_readouts(slide) -> list[SlideReadout]:
    """Return the current read-outs of a slide: reviewed, then model and combined per version.

    Versions are those with a succeeded segmentation run on the slide that stored a
    predictions file, in order of id. A version whose latest run's file cannot be read is
    left out and logged.
    """
    readouts = [current_readout(slide, Source.REVIEWED)]
    version_ids = (
        ProposalRun.objects.filter(slide=slide, status=ProposalRun.Status.SUCCEEDED)
        .exclude(model_version=None)
        .exclude(predictions_file="")
        .values_list("model_version_id", flat=True)
        .distinct()
    )
    for version in ModelVersion.objects.filter(pk__in=list(version_ids)).order_by("id"):
        for source in (Source.MODEL, Source.COMBINED):
            try:
                readouts.append(current_readout(slide, source, version))
            except ReadoutUnavailable as error:
                logger.warning(
                    "Read-out of slide %s, model version %s skipped: %s", slide.pk, version.pk, error
                )
    return readouts


def ifta_settings() -> dict:
    """Return the configured IFTA settings (NEPHROWEB_IFTA) as ``ml.clinical.ifta`` keywords."""
    return {
        name: settings.NEPHROWEB_IFTA[name]
        for name in ("cluster_distance_um", "min_tubules", "hull", "concave_ratio")
    }


def _check_source(source: str, model_version) -> None:
    if source not in Source.values:
        raise ReadoutUnavailable(
            f"source must be one of {', '.join(Source.values)}, got {source!r}."
        )
    if source == Source.REVIEWED and model_version is not None:
        raise ReadoutUnavailable(
            "The reviewed source measures reviewed annotations only: leave model_version out."
        )
    if source != Source.REVIEWED and model_version is None:
        raise ReadoutUnavailable(f"The {source} source needs a model_version.")


def _non_pending_instances(slide) -> list[ReviewedInstance]:
    rows = (
        Instance.objects.filter(slide=slide)
        .exclude(review_state=State.PENDING)
        .order_by("id")
        .values_list("id", "version", "review_state", "class_name", "geometry")
    )
    return [
        ReviewedInstance(pk, version, state, class_name, geometry)
        for pk, version, state, class_name, geometry in rows
    ]


def _inputs_key(slide, source: str, instances: list[ReviewedInstance], run) -> str:
    """Digest the source, reviewed instances, run, settings, classes, mpp and tissue mask.

    An instance's version rises with every change of its geometry, class or state, and a
    deleted or new instance changes the id list, so every review change changes the key.
    """
    inputs = {
        "source": source,
        "instances": [
            [instance.id, instance.version, instance.review_state, instance.class_name]
            for instance in instances
        ],
        "run": [run.pk, run.predictions_file] if run is not None else None,
        "ifta_settings": ifta_settings(),
        "classes": [instance_class.name for instance_class in configured_classes()],
        "mpp": slide.mpp,
        "tissue_mask": slide.tissue_geojson,
    }
    encoded = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _outlines(source: str, instances: list[ReviewedInstance], predictions) -> list[tuple[str, BaseGeometry]]:
    """Return (class name, level-0 geometry) of every outline the source measures."""
    reviewed = [
        (instance.class_name, instance.geometry_level0)
        for instance in instances
        if instance.review_state in REVIEWED_STATES and instance.class_name != CORTEX_CLASS
    ]
    predicted = [(prediction.class_name, prediction.geometry_level0) for prediction in predictions]
    if source == Source.REVIEWED:
        return reviewed
    if source == Source.MODEL:
        return predicted

    # A cortex outline contains most predictions, so it must not count as a reviewer's
    # decision about them. Rejected instances do count: a rejection is a reviewer's "no".
    decided = [
        instance.geometry_level0 for instance in instances if instance.class_name != CORTEX_CLASS
    ]
    if not decided:
        return reviewed + predicted
    tree = STRtree(decided)
    kept_predictions = [
        (class_name, geometry)
        for class_name, geometry in predicted
        if not overlaps_any(geometry, tree, decided)
    ]
    return reviewed + kept_predictions


def _cortex_level0(slide, instances: list[ReviewedInstance]) -> tuple[BaseGeometry | None, str]:
    """Return the cortex in level-0 pixels and where it came from, or (None, "") without one."""
    annotated = [
        instance.geometry_level0
        for instance in instances
        if instance.review_state in REVIEWED_STATES and instance.class_name == CORTEX_CLASS
    ]
    if annotated:
        cortex = MultiPolygon(make_valid_polygons(unary_union(annotated)))
        if cortex.area > 0:
            return cortex, CORTEX_FROM_ANNOTATION
    if slide.tissue_geojson:
        tissue = MultiPolygon(make_valid_polygons(shape(slide.tissue_geojson)))
        if tissue.area > 0:
            return tissue, CORTEX_FROM_TISSUE_MASK
    return None, ""


def _measure(slide, outlines, cortex: tuple[BaseGeometry | None, str]) -> ReadoutValues:
    """Compute every number of a read-out from its outlines and cortex."""
    cortex_level0, cortex_source = cortex
    class_names = [
        instance_class.name
        for instance_class in configured_classes()
        if instance_class.name not in (BACKGROUND_CLASS, CORTEX_CLASS)
    ]
    counts = {name: sum(class_name == name for class_name, _ in outlines) for name in class_names}
    messages = []

    glomeruli = clinical.glomerulosclerosis(
        counts.get(GLOMERULUS_CLASS, 0), counts.get(SCLEROTIC_GLOMERULUS_CLASS, 0)
    )
    if glomeruli.reason:
        messages.append(f"{glomeruli.reason[0].upper()}{glomeruli.reason[1:]}.")

    used_settings = ifta_settings()
    ifta = None
    densities = {}
    cortex_area_um2 = 0.0
    if cortex_level0 is None:
        messages.append(
            "IFTA % and densities need a cortex: this slide has no accepted \"cortex\" "
            "annotation and no tissue mask. Draw the cortex with the class \"cortex\"."
        )
    else:
        cortex_area_um2 = cortex_level0.area * slide.mpp * slide.mpp
        densities = clinical.densities_per_mm2(counts, cortex_area_um2)
        atrophic = [geometry for class_name, geometry in outlines if class_name == ATROPHIC_TUBULE_CLASS]
        try:
            ifta = clinical.ifta(atrophic, cortex_level0, slide.mpp, **used_settings)
        except clinical.ClinicalInputError as error:
            logger.warning("Read-out of slide %s: IFTA failed: %s", slide.pk, error)
            messages.append(f"IFTA % could not be measured: {error}")

    banff = clinical.banff_ci_ct(ifta.ifta_pct) if ifta is not None else None
    return ReadoutValues(
        counts=counts,
        densities_per_mm2=densities,
        cortex_source=cortex_source,
        cortex_area_um2=cortex_area_um2,
        ifta_pct=ifta.ifta_pct if ifta is not None else None,
        ifta_area_um2=ifta.ifta_area_um2 if ifta is not None else 0.0,
        ifta_regions=mapping(ifta.regions_level0) if ifta is not None else {},
        ifta_clusters=[asdict(cluster) for cluster in ifta.clusters] if ifta is not None else [],
        glomeruli_count=glomeruli.n_glomeruli,
        sclerotic_count=glomeruli.n_sclerotic,
        glomerulosclerosis_pct=glomeruli.pct,
        banff_ci=banff.ci if banff is not None else None,
        banff_ct=banff.ct if banff is not None else None,
        settings=used_settings,
        message=" ".join(messages),
    )


def _stored_readout(slide, source: str, model_version) -> SlideReadout | None:
    return SlideReadout.objects.filter(
        slide=slide, source=source, model_version=model_version
    ).first()


def _save(slide, source, model_version, run, inputs_key: str, values: ReadoutValues) -> SlideReadout:
    """Create or update the one row of (slide, source, model version).

    Two requests may recompute the same read-out at once. The unique constraints let only
    one create the row. Django's update_or_create catches the other's IntegrityError,
    reads the row and updates it.
    """
    fields = {**asdict(values), "inputs_key": inputs_key, "proposal_run": run}
    readout, _ = SlideReadout.objects.update_or_create(
        slide=slide, source=source, model_version=model_version, defaults=fields
    )
    return readout
