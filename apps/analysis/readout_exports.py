"""CSV export of clinical read-outs: one row per slide and source (columns in docs/exports.md).

The rows come from ``readouts.slide_readouts``, so every read-out is current when it is
written. Missing values are empty cells, never NaN. Text cells that a spreadsheet would
run as a formula are neutralised.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import timezone

from django.conf import settings

from apps.annotations.csv_export import neutralise
from apps.review.selectors import slide_progress

from .readouts import BACKGROUND_CLASS, CORTEX_CLASS, slide_readouts
from .reports import patient_reports_by_key, reported_ifta_pct

LEADING_COLUMNS = [
    "cohort", "patient_id", "section", "slide_id", "slide_name", "source", "model_version",
]
TRAILING_COLUMNS = [
    "ifta_pct", "ifta_area_um2", "cortex_area_um2", "cortex_source", "glomerulosclerosis_pct",
    "banff_ci", "banff_ct", "report_ifta_pct", "reviewed_pct", "computed_at",
]
# Classes that are not objects to count: the background and the cortex outline.
UNCOUNTED_CLASSES = (BACKGROUND_CLASS, CORTEX_CLASS)


def counted_classes() -> list[str]:
    """Return the configured class names that get a count column, in configured order."""
    return [
        entry["name"] for entry in settings.NEPHROWEB_CLASSES
        if entry["name"] not in UNCOUNTED_CLASSES
    ]


def count_column(class_name: str) -> str:
    """Return the count column of a class: ``count_`` and the name with underscores."""
    return "count_" + class_name.replace(" ", "_")


def readout_columns() -> list[str]:
    """Return the header of the read-out CSV."""
    return LEADING_COLUMNS + [count_column(name) for name in counted_classes()] + TRAILING_COLUMNS


def readout_rows(slides) -> list[dict]:
    """Build one row per slide and read-out source, in the order of ``slides``."""
    patient_reports = patient_reports_by_key()
    class_names = counted_classes()
    rows = []
    for slide in slides:
        progress = slide_progress(slide)
        fraction = progress["reviewed_fraction"]
        for readout in slide_readouts(slide):
            row = {
                "cohort": slide.cohort,
                "patient_id": slide.patient_id,
                "section": slide.section,
                "slide_id": slide.pk,
                "slide_name": slide.name,
                "source": readout.source,
                "model_version": readout.model_version_id,
                "ifta_pct": readout.ifta_pct,
                "ifta_area_um2": readout.ifta_area_um2,
                "cortex_area_um2": readout.cortex_area_um2,
                "cortex_source": readout.cortex_source,
                "glomerulosclerosis_pct": readout.glomerulosclerosis_pct,
                "banff_ci": readout.banff_ci,
                "banff_ct": readout.banff_ct,
                "report_ifta_pct": reported_ifta_pct(slide, patient_reports),
                "reviewed_pct": None if fraction is None else 100.0 * fraction,
                "computed_at": _iso_utc(readout.computed_at),
            }
            for name in class_names:
                row[count_column(name)] = readout.counts.get(name, 0)
            rows.append(row)
    return rows


def readouts_csv(slides) -> str:
    """Write the read-outs of ``slides`` as CSV text with CRLF line ends."""
    columns = readout_columns()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in readout_rows(slides):
        writer.writerow([neutralise(_cell(row.get(column))) for column in columns])
    return buffer.getvalue()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def _iso_utc(moment) -> str:
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).isoformat()
