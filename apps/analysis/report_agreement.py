"""Agreement of predicted with reported IFTA % over the slides of a cohort.

The predicted value of a slide is the IFTA % of its current read-out from the chosen
source. The reported value is the patient report of its patient, else the slide's own
report. ``ml.agreement.agreement`` averages the sections of each patient and computes
the statistics. This module gathers the values and records why a slide is left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apps.slides.models import Slide
from apps.training.models import ModelVersion
from ml.agreement import AgreementResult, agreement

from .models import SlideReadout
from .readouts import ReadoutUnavailable, current_readout, readout_label
from .reports import patient_reports_by_key, reported_ifta_pct

logger = logging.getLogger(__name__)

Source = SlideReadout.Source


class FilterError(ValueError):
    """A dashboard filter value that names no source or cohort."""


@dataclass(frozen=True)
class SourceChoice:
    """One source of predicted values: reviewed annotations, or a model version's outlines.

    Attributes:
        value: The form value: "reviewed", "model:<version id>" or "combined:<version id>".
        source: The read-out source.
        model_version: The version for the model and combined sources, else None.
    """

    value: str
    source: str
    model_version: ModelVersion | None

    @property
    def label(self) -> str:
        return readout_label(self.source, self.model_version)

    @property
    def slug(self) -> str:
        """The source as a file name part: reviewed, model-3, combined-3."""
        return self.value.replace(":", "-")


@dataclass(frozen=True)
class PatientRow:
    """One patient of the dashboard table.

    Attributes:
        key: The patient as ``ml.agreement`` names it in notes: the id (or "slide <id>"),
            with the cohort when there is one. Unique within the filter.
        cohort: The patient's cohort.
        patient_id: The patient id, empty for a slide without one (it is its own patient).
        label: The patient as shown: the id, or "slide <id>".
        sections: (id, name) of the slides whose values entered the statistics.
        predicted_pct: Mean predicted IFTA % over those sections, None if none entered.
        reported_pct: The reported IFTA % used, None if none entered.
        patient_report_pct: The stored patient report, None if there is none.
    """

    key: str
    cohort: str
    patient_id: str
    label: str
    sections: tuple[tuple[int, str], ...]
    predicted_pct: float | None
    reported_pct: float | None
    patient_report_pct: float | None

    @property
    def difference_pct(self) -> float | None:
        if self.predicted_pct is None or self.reported_pct is None:
            return None
        return self.predicted_pct - self.reported_pct


@dataclass(frozen=True)
class LeftOutSlide:
    """A slide whose values did not enter the statistics, with the reason."""

    slide: Slide
    reason: str


@dataclass(frozen=True)
class ReportAgreement:
    """Agreement statistics of one source and cohort, with the table behind them.

    Attributes:
        choice: The source of predicted values.
        cohort: The cohort filter, empty for all cohorts.
        result: The statistics from ``ml.agreement``.
        patients: Every patient with a slide in the filter, sorted by cohort and label.
        left_out: Slides without a predicted or reported value.
    """

    choice: SourceChoice
    cohort: str
    result: AgreementResult
    patients: tuple[PatientRow, ...]
    left_out: tuple[LeftOutSlide, ...]

    @property
    def cohort_label(self) -> str:
        return self.cohort or "all cohorts"


def source_choices() -> list[SourceChoice]:
    """List the sources: reviewed, then model and combined for each succeeded model version."""
    choices = [SourceChoice(Source.REVIEWED.value, Source.REVIEWED, None)]
    versions = ModelVersion.objects.filter(status=ModelVersion.Status.SUCCEEDED).order_by("id")
    for version in versions:
        for source in (Source.MODEL, Source.COMBINED):
            choices.append(SourceChoice(f"{source}:{version.pk}", source, version))
    return choices


def parse_source(value: str | None) -> SourceChoice:
    """Return the source a form value names; empty means reviewed annotations.

    Raises:
        FilterError: The value is malformed or names no model version.
    """
    value = (value or "").strip() or Source.REVIEWED.value
    if value == Source.REVIEWED:
        return SourceChoice(value, Source.REVIEWED, None)
    source, _, version_id = value.partition(":")
    if source not in (Source.MODEL, Source.COMBINED) or not version_id.isdigit():
        raise FilterError(
            f"source: {value!r} is not a source. Use reviewed, model:<version id> or "
            f"combined:<version id>."
        )
    version = ModelVersion.objects.filter(pk=int(version_id)).first()
    if version is None:
        raise FilterError(f"source: model version {version_id} does not exist.")
    return SourceChoice(value, source, version)


def cohort_choices() -> list[str]:
    """List the named cohorts of all slides, in alphabetical order."""
    # Limitation: slides without a cohort can be shown only together with all cohorts,
    # because the empty filter value means "all cohorts".
    cohorts = Slide.objects.exclude(cohort="").order_by("cohort").values_list("cohort", flat=True)
    return list(cohorts.distinct())


def parse_cohort(value: str | None) -> str:
    """Return the cohort filter: blank for all cohorts, else a cohort some slide is in.

    Raises:
        FilterError: no slide is in the named cohort, or the name contains a NUL character
            (which PostgreSQL refuses in a query).
    """
    cohort = (value or "").strip()
    if "\x00" in cohort:
        raise FilterError("cohort: the name contains a NUL character (\\x00). Remove it.")
    if cohort and not Slide.objects.filter(cohort=cohort).exists():
        known = ", ".join(repr(name) for name in cohort_choices()) or "none yet"
        raise FilterError(f"cohort: no slide is in cohort {cohort!r}. Known cohorts: {known}.")
    return cohort


def report_agreement(choice: SourceChoice, cohort: str = "") -> ReportAgreement:
    """Compare predicted with reported IFTA % per patient over the slides of ``cohort``.

    A blank cohort takes every slide. Slides without a reported value, without a
    predicted IFTA % or without a read-out from the source are left out with the reason.
    """
    slides = Slide.objects.order_by("cohort", "patient_id", "section", "id")
    if cohort:
        slides = slides.filter(cohort=cohort)
    patient_reports = patient_reports_by_key()

    table_rows = []
    left_out = []
    slides_by_patient: dict[str, list[Slide]] = {}
    used_by_patient: dict[str, list[tuple[int, str]]] = {}
    for slide in slides:
        key = _patient_name(slide)
        slides_by_patient.setdefault(key, []).append(slide)
        reported_pct = reported_ifta_pct(slide, patient_reports)
        predicted_pct, reason = _predicted_pct(slide, choice)
        if reason is None and reported_pct is None:
            reason = "no reported IFTA % (neither a patient report nor a section report)"
        if reason is not None:
            left_out.append(LeftOutSlide(slide, reason))
            continue
        section = str(slide.section) if slide.section is not None else f"slide {slide.pk}"
        table_rows.append((key, section, predicted_pct, reported_pct))
        used_by_patient.setdefault(key, []).append((slide.pk, slide.name))

    result = agreement(table_rows)
    means = {patient.patient: patient for patient in result.patients}
    patients = []
    for key, patient_slides in slides_by_patient.items():
        first = patient_slides[0]
        mean = means.get(key)
        patients.append(PatientRow(
            key=key,
            cohort=first.cohort,
            patient_id=first.patient_id,
            label=first.patient_id or f"slide {first.pk}",
            sections=tuple(used_by_patient.get(key, ())),
            predicted_pct=mean.predicted_pct if mean else None,
            reported_pct=mean.reported_pct if mean else None,
            patient_report_pct=patient_reports.get((first.cohort, first.patient_id))
            if first.patient_id else None,
        ))
    patients.sort(key=lambda row: (row.cohort, row.label))
    logger.info(
        "Agreement of %s in %s: %d patients, %d slides left out",
        choice.value, cohort or "all cohorts", result.n_patients, len(left_out),
    )
    return ReportAgreement(choice, cohort, result, tuple(patients), tuple(left_out))


def _patient_name(slide: Slide) -> str:
    """Name a slide's patient for users, unique across cohorts: "demo-3 (cohort c1)"."""
    name = slide.patient_id or f"slide {slide.pk}"
    return f"{name} (cohort {slide.cohort})" if slide.cohort else name


def _predicted_pct(slide: Slide, choice: SourceChoice) -> tuple[float | None, str | None]:
    try:
        readout = current_readout(slide, choice.source, choice.model_version)
    except ReadoutUnavailable as error:
        return None, f"no read-out: {error}"
    if readout.ifta_pct is None:
        detail = f": {readout.message}" if readout.message else ""
        return None, f"no predicted IFTA %{detail}"
    return readout.ifta_pct, None
