"""Pathology report values of IFTA %: per slide (section) or per patient, entered or imported.

A patient report (``PatientReport``) covers all sections of a patient in one cohort. A
section report is ``Slide.report_ifta_pct``. Where a patient has both, the patient report
is the reported value (:func:`reported_ifta_pct`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from apps.accounts import audit
from apps.slides.models import Slide
from ml.errors import NephrowebError

from .models import PatientReport

logger = logging.getLogger(__name__)

# A report table has one short line per patient or section, so 1 MB is tens of thousands
# of rows. Larger uploads are rejected before they are read.
MAX_REPORT_CSV_BYTES = 1024 * 1024
REQUIRED_COLUMNS = ("patient", "report_ifta_pct")
OPTIONAL_COLUMNS = ("section", "cohort")
MAX_ID_LENGTH = 64
# A plain decimal number such as 12, 12.5, .5 or 1e1. Python's float() also accepts
# "nan", "inf", "1_0" and non-ASCII digits, which in a report cell are typing errors.
_DECIMAL_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


class ReportError(NephrowebError, ValueError):
    """A report value or report file that cannot be stored."""


@dataclass(frozen=True)
class ReportImportResult:
    """Counts of the rows that :func:`import_reports` wrote.

    Attributes:
        file_name: The file as the user named it.
        slide_reports: Slides whose ``report_ifta_pct`` was set.
        patient_reports: Patient reports created or updated.
    """

    file_name: str
    slide_reports: int
    patient_reports: int


def parse_report_pct(value, field: str = "report_ifta_pct") -> float | None:
    """Return a report value as a float from 0 to 100, or None for an empty value.

    Raises:
        ReportError: The value is not a number or lies outside 0-100.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _DECIMAL_NUMBER.fullmatch(text):
            raise ReportError(
                f"{field}: {text!r} is not a number. Write a percentage such as 12.5 "
                f"(no % sign, '.' as decimal point)."
            )
        number = float(text)
    else:
        number = float(value)
    if not math.isfinite(number):
        raise ReportError(
            f"{field}: {str(value).strip()!r} is not a finite number. Write a percentage "
            "from 0 to 100."
        )
    if not 0.0 <= number <= 100.0:
        raise ReportError(
            f"{field}: {number:g} is outside 0-100. Write a percentage, not a fraction "
            f"(12.5, not 0.125)."
        )
    # -0 is stored and shown as 0.
    return number + 0.0


def set_slide_report(slide: Slide, report_ifta_pct) -> Slide:
    """Store the IFTA % a report gives for one section; an empty value clears it."""
    slide.report_ifta_pct = parse_report_pct(report_ifta_pct)
    slide.save(update_fields=["report_ifta_pct"])
    logger.info("Slide %s: report IFTA set to %s", slide.pk, slide.report_ifta_pct)
    return slide


def set_patient_report(
    cohort: str, patient_id: str, report_ifta_pct, *, user=None
) -> PatientReport | None:
    """Store the IFTA % a report gives for a whole patient; an empty value deletes it.

    Raises:
        ReportError: The patient id is empty, no slide of that patient exists in the
            cohort, or the value is not a percentage.
    """
    cohort = (cohort or "").strip()
    patient_id = (patient_id or "").strip()
    value = parse_report_pct(report_ifta_pct)
    if not patient_id:
        raise ReportError("patient: the patient id is empty. Name the patient.")
    if not Slide.objects.filter(cohort=cohort, patient_id=patient_id).exists():
        raise ReportError(
            f"patient {patient_id!r} has no slide in cohort {cohort or '(none)'!r}. "
            f"Import the slides first, or check the cohort."
        )
    identity = {"cohort": cohort, "patient_id": patient_id}
    with transaction.atomic():
        if value is None:
            existing = PatientReport.objects.filter(**identity).first()
            if existing is not None:
                audit.record(
                    audit.Action.DELETE, user=user, target_type=audit.Target.PATIENT_REPORT,
                    target_id=existing.pk, detail=identity,
                )
                existing.delete()
            logger.info("Patient report deleted: cohort %r, patient %r", cohort, patient_id)
            return None
        report, created = PatientReport.objects.update_or_create(
            **identity, defaults={"report_ifta_pct": value, "updated_by": user},
        )
        audit.record(
            audit.Action.CREATE if created else audit.Action.CHANGE, user=user,
            target_type=audit.Target.PATIENT_REPORT, target_id=report.pk,
            detail={**identity, "report_ifta_pct": value},
        )
    logger.info("Patient report set: cohort %r, patient %r, %g %%", cohort, patient_id, value)
    return report


def patient_reports_by_key() -> dict[tuple[str, str], float]:
    """Map (cohort, patient_id) to the patient's reported IFTA %."""
    return {
        (cohort, patient_id): value
        for cohort, patient_id, value in PatientReport.objects.values_list(
            "cohort", "patient_id", "report_ifta_pct"
        )
    }


def reported_ifta_pct(slide: Slide, patient_reports: dict[tuple[str, str], float]) -> float | None:
    """Return the reported IFTA % that applies to a slide: its patient's, else its own."""
    if slide.patient_id:
        patient_value = patient_reports.get((slide.cohort, slide.patient_id))
        if patient_value is not None:
            return patient_value
    return slide.report_ifta_pct


def import_reports(path_or_file, *, user=None) -> ReportImportResult:
    """Import report values from a CSV file: all rows or none.

    Columns: ``patient`` and ``report_ifta_pct`` (0-100) are required, ``section`` and
    ``cohort`` optional. A row with a section sets that slide's report, a row without one
    sets the patient report. An empty cohort cell means the cohort of the patient's
    slides, which must then be a single cohort.

    Args:
        path_or_file: A path, or an uploaded file with ``name``, ``size`` and ``read()``.

    Raises:
        ReportError: The file is too large, unreadable or invalid, or rows name a patient
            or section that matches no slide. The message names the file, line and column
            of every problem found. Nothing is written then.
    """
    file_name, text = _read_text(path_or_file)
    rows = _parse_rows(file_name, text)
    slide_updates, patient_updates = _match_rows(file_name, rows)
    with transaction.atomic():
        for slide, value in slide_updates:
            slide.report_ifta_pct = value
            slide.save(update_fields=["report_ifta_pct"])
        for (cohort, patient_id), value in patient_updates.items():
            PatientReport.objects.update_or_create(
                cohort=cohort, patient_id=patient_id,
                defaults={"report_ifta_pct": value, "updated_by": user},
            )
        audit.record(
            audit.Action.IMPORT, user=user, target_type=audit.Target.REPORT_FILE, detail={
                "file_name": file_name, "slide_reports": len(slide_updates),
                "patient_reports": len(patient_updates),
            },
        )
    logger.info(
        "Imported reports from %s: %d slide reports, %d patient reports",
        file_name, len(slide_updates), len(patient_updates),
    )
    return ReportImportResult(file_name, len(slide_updates), len(patient_updates))


@dataclass(frozen=True)
class _ReportRow:
    line: int
    patient_id: str
    section: int | None
    cohort: str | None
    value: float


def _read_text(path_or_file) -> tuple[str, str]:
    if isinstance(path_or_file, (str, Path)):
        path = Path(path_or_file)
        file_name = str(path)
        try:
            size = path.stat().st_size
            _check_size(file_name, size)
            data = path.read_bytes()
        except OSError as exc:
            raise ReportError(f"Cannot read {file_name}: {exc.strerror}. Check the path.") from exc
    else:
        file_name = Path(getattr(path_or_file, "name", "") or "upload").name
        size = getattr(path_or_file, "size", None)
        if size is not None:
            _check_size(file_name, size)
        data = path_or_file.read(MAX_REPORT_CSV_BYTES + 1)
        _check_size(file_name, len(data))
    try:
        return file_name, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ReportError(f"{file_name} is not UTF-8 text. Save it as a UTF-8 CSV.") from None


def _check_size(file_name: str, size: int) -> None:
    if size > MAX_REPORT_CSV_BYTES:
        raise ReportError(
            f"{file_name}: {size:,} bytes exceed the limit of "
            f"{MAX_REPORT_CSV_BYTES // 2**20} MB ({MAX_REPORT_CSV_BYTES:,} bytes) for report "
            "files. Split the file."
        )


def _parse_rows(file_name: str, text: str) -> list[_ReportRow]:
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ReportError(
            f"{file_name} line {line}: contains a NUL character, so it is not a text CSV file. "
            "Save it as a UTF-8 CSV."
        )
    # strict: a stray quote or an unclosed quoted cell is an error, not part of a value.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = _header(file_name, reader.fieldnames or [])
    except csv.Error as exc:
        raise ReportError(f"{file_name} is not a valid CSV file: {exc}.") from None
    reader.fieldnames = header

    rows = []
    errors = []
    try:
        for record in reader:
            line = reader.line_num
            if None in record:
                # DictReader puts the cells beyond the header under the key None.
                errors.append(
                    f"{file_name} line {line}: {len(header) + len(record[None])} cells, but "
                    f"the header names {len(header)} columns. Quote a value that contains a "
                    "comma, and write decimals with '.' (12.5, not 12,5)."
                )
                continue
            row, problems = _parse_record(file_name, line, record)
            errors.extend(problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        # DictReader.line_num is only updated after a record is complete, so the line where
        # parsing stopped comes from the underlying reader.
        line = reader.reader.line_num
        raise ReportError(f"{file_name} line {line}: invalid CSV: {exc}.") from None
    if errors:
        raise ReportError("\n".join(errors))
    if not rows:
        raise ReportError(f"{file_name} has a header but no rows. Add one row per report.")
    return rows


def _header(file_name: str, names: list[str]) -> list[str]:
    """Return the column names, stripped and lower-cased, after checking them.

    Raises:
        ReportError: A column appears twice, or a required column is missing.
    """
    header = [name.strip().lower() for name in names]
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        named = (
            f"the column {repeated[0]} appears" if len(repeated) == 1
            else f"the columns {', '.join(repeated)} appear"
        )
        raise ReportError(
            f"{file_name} line 1: {named} more than once. Keep one column of each name."
        )
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        joined = "".join(header)
        separator_hint = ""
        if ";" in joined:
            separator_hint = " Separate the columns with commas, not semicolons."
        elif "\t" in joined:
            separator_hint = " Separate the columns with commas, not tabs."
        raise ReportError(
            f"{file_name} line 1: missing the columns {', '.join(missing)}. Found: "
            f"{', '.join(header) or 'no header'}. The first line must name the columns "
            f"patient and report_ifta_pct, and may name section and cohort." + separator_hint
        )
    return header


def _parse_record(file_name: str, line: int, record: dict) -> tuple[_ReportRow | None, list[str]]:
    problems = []
    patient_id = (record.get("patient") or "").strip()
    section_text = (record.get("section") or "").strip()
    cohort = (record.get("cohort") or "").strip()
    where = f"{file_name} line {line}"

    if not patient_id:
        problems.append(f"{where}, column patient: the cell is empty. Fill in the patient id.")
    elif len(patient_id) > MAX_ID_LENGTH:
        problems.append(
            f"{where}, column patient: longer than {MAX_ID_LENGTH} characters, so no slide "
            "can have this patient id. Write the patient id as the slides have it."
        )
    if len(cohort) > MAX_ID_LENGTH:
        problems.append(
            f"{where}, column cohort: longer than {MAX_ID_LENGTH} characters, so no slide "
            "can be in this cohort. Write the cohort as the slides have it."
        )

    section = None
    if section_text:
        try:
            section = int(section_text)
        except ValueError:
            section = -1
        if section < 0:
            problems.append(
                f"{where}, column section: {section_text!r} is not a non-negative whole "
                f"number. Leave it empty for a report of the whole patient."
            )

    value = None
    cell = record.get("report_ifta_pct")
    if cell is None or not cell.strip():
        problems.append(f"{where}, column report_ifta_pct: the cell is empty. Fill in a percentage.")
    else:
        try:
            value = parse_report_pct(cell)
        except ReportError as exc:
            problems.append(f"{where}, column {exc}")

    if problems:
        return None, problems
    return _ReportRow(line, patient_id, section, cohort or None, value), []


def _match_rows(
    file_name: str, rows: list[_ReportRow]
) -> tuple[list[tuple[Slide, float]], dict[tuple[str, str], float]]:
    slides_by_patient: dict[str, list[Slide]] = {}
    patient_ids = {row.patient_id for row in rows}
    for slide in Slide.objects.filter(patient_id__in=patient_ids).order_by("id"):
        slides_by_patient.setdefault(slide.patient_id, []).append(slide)

    slide_updates: list[tuple[Slide, float]] = []
    patient_updates: dict[tuple[str, str], float] = {}
    unmatched = []
    errors = []
    first_line_of: dict[tuple, int] = {}
    for row in rows:
        where = f"{file_name} line {row.line}"
        candidates = [
            slide for slide in slides_by_patient.get(row.patient_id, [])
            if row.cohort is None or slide.cohort == row.cohort
        ]
        if row.section is not None:
            candidates = [slide for slide in candidates if slide.section == row.section]
        cohorts = sorted({slide.cohort for slide in candidates})
        label = _row_label(row)
        if not candidates:
            unmatched.append(f"line {row.line}: {label}")
        elif len(cohorts) > 1:
            errors.append(
                f"{where}, column cohort: {label} has slides in the cohorts "
                f"{', '.join(repr(c) for c in cohorts)}. Fill in the cohort."
            )
        elif row.section is not None and len(candidates) > 1:
            names = ", ".join(f"{slide.name} (#{slide.pk})" for slide in candidates)
            errors.append(
                f"{where}, column section: {label} matches {len(candidates)} slides ({names}). "
                f"Give each section its own number."
            )
        elif (target := _report_target(row, candidates, cohorts)) in first_line_of:
            errors.append(
                f"{where}: {label} has a report on line {first_line_of[target]} already. "
                "Keep one row per section or patient."
            )
        else:
            first_line_of[target] = row.line
            if row.section is not None:
                slide_updates.append((candidates[0], row.value))
            else:
                patient_updates[(cohorts[0], row.patient_id)] = row.value
    if unmatched:
        errors.append(
            f"{file_name}: {_rows_match(len(unmatched))} no slide (columns patient, section, "
            f"cohort): {'; '.join(unmatched)}. Import those slides with their patient id "
            f"and section first, or correct the rows."
        )
    if errors:
        raise ReportError("\n".join(errors))
    return slide_updates, patient_updates


def _rows_match(count: int) -> str:
    return "1 row matches" if count == 1 else f"{count} rows match"


def _report_target(row: _ReportRow, candidates: list[Slide], cohorts: list[str]) -> tuple:
    """Return what a row sets: one slide's report, or one patient's."""
    if row.section is not None:
        return ("slide", candidates[0].pk)
    return ("patient", cohorts[0], row.patient_id)


def _row_label(row: _ReportRow) -> str:
    label = f"patient {row.patient_id!r}"
    if row.section is not None:
        label += f" section {row.section}"
    if row.cohort is not None:
        label += f" in cohort {row.cohort!r}"
    return label
