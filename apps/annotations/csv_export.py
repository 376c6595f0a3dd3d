"""CSV exports of review counts, per slide and per cohort (columns in docs/exports.md).

A cell that starts with =, +, - or @ is a formula to a spreadsheet, so such text cells
are prefixed with an apostrophe. Numbers are written as numbers.
"""

import csv
import io

from django.db.models import Count

from .models import Instance, InstanceEvent

COUNT_COLUMNS = [
    "slide_id", "slide_name", "patient_id", "section", "class_name",
    "pending", "accepted", "edited", "rejected", "total",
]
REVIEWER_COLUMNS = [
    "slide_id", "slide_name", "patient_id", "section", "reviewer",
    "accept", "reject", "relabel", "edit", "reopen", "draw", "delete", "undo", "total",
]
NO_CLASS = "(no class)"
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    """Return a cell value that a spreadsheet shows as text, never runs as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def _write(columns, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([neutralise(row.get(column, "")) for column in columns])
    return buffer.getvalue()


def _slide_fields(slide) -> dict:
    return {
        "slide_id": slide.pk,
        "slide_name": slide.name,
        "patient_id": slide.patient_id,
        "section": "" if slide.section is None else slide.section,
    }


def count_rows(slides) -> list[dict]:
    """Count instances per review state, as one row per slide and class."""
    rows = []
    for slide in slides:
        counts = (
            Instance.objects.filter(slide=slide)
            .values_list("class_name", "review_state")
            .annotate(n=Count("id"))
        )
        per_class: dict[str, dict] = {}
        for class_name, state, n in counts:
            row = per_class.setdefault(class_name or NO_CLASS, {
                **_slide_fields(slide), "class_name": class_name or NO_CLASS,
                **{s: 0 for s in Instance.ReviewState.values},
            })
            row[state] = n
        for class_name in sorted(per_class):
            row = per_class[class_name]
            row["total"] = sum(row[s] for s in Instance.ReviewState.values)
            rows.append(row)
    return rows


def reviewer_rows(slides) -> list[dict]:
    """Count changes of each kind, as one row per slide and reviewer."""
    rows = []
    actions = [c for c in REVIEWER_COLUMNS[5:-1]]
    for slide in slides:
        counts = (
            InstanceEvent.objects.filter(slide=slide).exclude(user=None)
            .values_list("user__username", "action").annotate(n=Count("id"))
        )
        per_reviewer: dict[str, dict] = {}
        for username, action, n in counts:
            row = per_reviewer.setdefault(username, {
                **_slide_fields(slide), "reviewer": username, **{a: 0 for a in actions},
            })
            if action in row:
                row[action] = n
        for username in sorted(per_reviewer):
            row = per_reviewer[username]
            row["total"] = sum(row[a] for a in actions)
            rows.append(row)
    return rows


def counts_csv(slides) -> str:
    return _write(COUNT_COLUMNS, count_rows(slides))


def reviewers_csv(slides) -> str:
    return _write(REVIEWER_COLUMNS, reviewer_rows(slides))
