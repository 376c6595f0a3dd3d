"""Reading the audit log: the filter that the page, the API and the CSV download share.

Dates are calendar days in UTC, the server's time zone, and both ends are inclusive.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

from django import forms

from apps.annotations.csv_export import neutralise

from .models import AuditEvent

PAGE_SIZE = 50
CSV_COLUMNS = [
    "time_utc", "username", "user_id", "action", "target_type", "target_id", "slide_id",
    "ip_address", "detail",
]


class AuditFilterForm(forms.Form):
    """Filters of the audit log; an empty field does not filter."""

    user = forms.CharField(
        required=False, max_length=150,
        help_text="User name, exact; it also finds the rows of deleted users and failed sign-ins.",
    )
    action = forms.ChoiceField(
        required=False, choices=[("", "any")] + list(AuditEvent.Action.choices)
    )
    slide = forms.IntegerField(required=False, min_value=1, help_text="Slide id.")
    date_from = forms.DateField(required=False, help_text="First day, YYYY-MM-DD (UTC).")
    date_to = forms.DateField(required=False, help_text="Last day, YYYY-MM-DD (UTC).")

    def clean(self):
        cleaned = super().clean()
        first, last = cleaned.get("date_from"), cleaned.get("date_to")
        if first and last and first > last:
            raise forms.ValidationError(
                f"date_from {first} is after date_to {last}; swap them or leave one empty."
            )
        return cleaned


def filtered_events(filters: dict):
    """Return the events matching the cleaned ``AuditFilterForm`` data, newest first."""
    events = AuditEvent.objects.all()
    if filters.get("user"):
        events = events.filter(username=filters["user"])
    if filters.get("action"):
        events = events.filter(action=filters["action"])
    if filters.get("slide") is not None:
        events = events.filter(slide_id=filters["slide"])
    if filters.get("date_from"):
        events = events.filter(created_at__gte=_day_start(filters["date_from"]))
    if filters.get("date_to"):
        events = events.filter(created_at__lt=_day_start(filters["date_to"] + dt.timedelta(days=1)))
    return events.order_by("-created_at", "-id")


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.timezone.utc)


def filter_values(filters: dict) -> dict:
    """Return the non-empty filters as JSON-serialisable values, for the export's audit row."""
    return {key: str(value) for key, value in filters.items() if value not in (None, "")}


def event_row(event: AuditEvent) -> dict:
    """Return one event as the API and the CSV show it."""
    return {
        "id": event.pk,
        "time_utc": event.created_at.astimezone(dt.timezone.utc).isoformat(),
        "username": event.username,
        "user_id": event.user_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "slide_id": event.slide_id,
        "ip_address": event.ip_address,
        "detail": event.detail,
    }


def events_csv(events) -> str:
    """Return ``events`` as CSV text with a header row.

    Text cells that a spreadsheet would run as a formula are neutralised, as in every
    CSV export of the product. ``detail`` is a JSON object in one cell.
    NOTE: the whole file is built in memory, as the ASGI server would collect a streamed
    response anyway. A date range keeps a download of a large log small.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for event in events.iterator(chunk_size=2000):
        row = event_row(event)
        row["detail"] = json.dumps(row["detail"], ensure_ascii=False, sort_keys=True)
        writer.writerow([
            neutralise("" if row[column] is None else row[column]) for column in CSV_COLUMNS
        ])
    return buffer.getvalue()
