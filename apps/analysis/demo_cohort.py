"""The demo's synthetic cohort: patients with scarred sample slides and report values.

Five patients, two sections each, drawn by ``ml.sample_slide`` with a scarred disc of
increasing size (atrophic tubules, fibrotic interstitium, sclerotic glomeruli). Every
object is imported as a reviewed annotation, the tissue of each section is marked as an
evaluation region, and each patient gets a pathology report value. The report values are
made up, in 5 % steps as reports give them. They let the dashboard show its statistics
offline and carry no information about any real model or patient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from shapely.geometry import mapping

from apps.annotations.importing import import_annotations
from apps.annotations.models import EvaluationRegion
from apps.review.services import add_evaluation_region
from apps.slides.models import Slide
from apps.slides.services import import_slide
from apps.training.demo_model import SAMPLE_CLASS_MAP

from .models import PatientReport

logger = logging.getLogger(__name__)

DEMO_COHORT = "demo (synthetic)"
SECTION_SIZE_PX = (3072, 2304)


@dataclass(frozen=True)
class DemoPatient:
    """One synthetic patient: per-section scar shares and sclerotic glomeruli, and a report."""

    patient_id: str
    scar_fractions: tuple[float, float]
    sclerotic_glomeruli: tuple[int, int]
    report_ifta_pct: float


DEMO_PATIENTS = (
    DemoPatient("demo-1", (0.02, 0.04), (0, 0), 5.0),
    DemoPatient("demo-2", (0.08, 0.06), (0, 1), 10.0),
    DemoPatient("demo-3", (0.12, 0.18), (1, 1), 20.0),
    DemoPatient("demo-4", (0.25, 0.22), (1, 2), 25.0),
    DemoPatient("demo-5", (0.35, 0.30), (2, 3), 40.0),
)


def ensure_demo_cohort(user) -> list[Slide]:
    """Write, import and annotate the cohort's sections once; return their slides.

    A section already imported is left as it is, so reviewers' changes survive a restart.
    """
    from ml.sample_slide import write_sample_slide

    folder = Path(settings.MEDIA_ROOT) / "samples" / "demo-cohort"
    folder.mkdir(parents=True, exist_ok=True)
    slides = []
    for patient_index, patient in enumerate(DEMO_PATIENTS):
        for section_index in range(2):
            section = section_index + 1
            path = (folder / f"{patient.patient_id}-section-{section}.tiff").resolve()
            existing = Slide.objects.filter(file_path=str(path)).first()
            if existing is not None:
                slides.append(existing)
                continue
            truth = write_sample_slide(
                path, size_level0=SECTION_SIZE_PX, seed=100 + 10 * patient_index + section,
                scar_fraction=patient.scar_fractions[section_index],
                sclerotic_glomeruli=patient.sclerotic_glomeruli[section_index],
            )
            slide = import_slide(
                path, origin=Slide.Origin.SAMPLE, patient_id=patient.patient_id,
                section=section, cohort=DEMO_COHORT, user=user,
            )
            _annotate(slide, truth, user)
            slides.append(slide)
        PatientReport.objects.get_or_create(
            cohort=DEMO_COHORT, patient_id=patient.patient_id,
            defaults={"report_ifta_pct": patient.report_ifta_pct, "updated_by": user},
        )
    logger.info("Demo cohort: %d sections of %d patients", len(slides), len(DEMO_PATIENTS))
    return slides


def _annotate(slide: Slide, truth, user) -> None:
    """Import every drawn object as a reviewed annotation and mark the tissue for evaluation."""
    from ml.annotation_files import AnnotationObject, read_annotation_file
    from ml.qupath_geojson import write_qupath_geojson

    objects = [
        AnnotationObject(index, obj.polygon_level0, SAMPLE_CLASS_MAP[obj.label])
        for index, obj in enumerate(truth.objects)
    ]
    geojson_path = truth.path.with_suffix(".geojson")
    write_qupath_geojson(objects, geojson_path)
    report = import_annotations(slide, read_annotation_file(geojson_path), user=user)
    logger.info("Demo cohort slide %s: %s", slide.pk, report.as_dict())
    if not EvaluationRegion.objects.filter(slide=slide).exists():
        add_evaluation_region(slide, user=user, geometry=mapping(truth.tissue_level0))
