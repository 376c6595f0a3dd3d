"""CSV exports: exact rows per slide and cohort, and formula cells neutralised."""

import csv
import io

import pytest
from shapely.geometry import box

from apps.annotations.geometry import instance_row
from apps.annotations.models import Instance
from apps.review import services
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db


def _slide(name, patient, section):
    return create_slide_record(name, 1000, 1000, patient_id=patient, section=section)


def _instances(slide, count, **fields):
    rows = [instance_row(box(i * 10, 0, i * 10 + 5, 5), slide=slide, mpp=0.5, source="sam", **fields)
            for i in range(count)]
    return Instance.objects.bulk_create(rows)


def _read(response):
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    text = response.content.decode("utf-8-sig")
    return list(csv.DictReader(io.StringIO(text)))


def test_slide_counts_csv_rows(client_for, make_user):
    slide = _slide("S1", "P1", 2)
    _instances(slide, 3)
    _instances(slide, 2, class_name="glomerulus", review_state="accepted")
    _instances(slide, 1, class_name="glomerulus", review_state="rejected")
    _instances(slide, 1, class_name="vessel", review_state="edited")
    rows = _read(client_for("pathologist").get(f"/api/slides/{slide.pk}/export.csv"))
    assert rows == [
        {"slide_id": str(slide.pk), "slide_name": "S1", "patient_id": "P1", "section": "2",
         "class_name": "(no class)", "pending": "3", "accepted": "0", "edited": "0",
         "rejected": "0", "total": "3"},
        {"slide_id": str(slide.pk), "slide_name": "S1", "patient_id": "P1", "section": "2",
         "class_name": "glomerulus", "pending": "0", "accepted": "2", "edited": "0",
         "rejected": "1", "total": "3"},
        {"slide_id": str(slide.pk), "slide_name": "S1", "patient_id": "P1", "section": "2",
         "class_name": "vessel", "pending": "0", "accepted": "0", "edited": "1",
         "rejected": "0", "total": "1"},
    ]


def test_cohort_csv_neutralises_formulas(client_for):
    dangerous = _slide("=HYPERLINK(\"http://127.0.0.1\")", "+31", None)
    plain = _slide("S2", "@home", 1)
    _instances(dangerous, 1)
    _instances(plain, 2, class_name="vessel", review_state="accepted")
    rows = _read(client_for("admin").get("/api/export/cohort.csv"))
    assert [(r["slide_name"], r["patient_id"], r["section"], r["total"]) for r in rows] == [
        ("'=HYPERLINK(\"http://127.0.0.1\")", "'+31", "", "1"),
        ("S2", "'@home", "1", "2"),
    ]


def test_reviewers_csv_counts_actions(client_for, make_user):
    slide = _slide("S1", "P1", 1)
    first, second = _instances(slide, 2)
    ann = make_user("annotator", username="ann")
    path = make_user("pathologist", username="path")
    services.accept(first.pk, user=ann, version=1)
    services.relabel(second.pk, user=ann, version=1, class_name="vessel")
    services.undo_last(slide, user=ann)
    services.reject(first.pk, user=path, version=2)
    rows = _read(client_for("pathologist").get("/api/export/reviewers.csv"))
    by_reviewer = {r["reviewer"]: r for r in rows}
    assert set(by_reviewer) == {"ann", "path"}
    assert (by_reviewer["ann"]["accept"], by_reviewer["ann"]["relabel"], by_reviewer["ann"]["undo"],
            by_reviewer["ann"]["total"]) == ("1", "1", "1", "3")
    assert (by_reviewer["path"]["reject"], by_reviewer["path"]["total"]) == ("1", "1")
