"""Read-out CSV export: documented header, values from known geometry, safe cells.

The slide has 0.5 µm per level-0 pixel, so one px² is 0.25 µm². Its accepted cortex
outline is 1000 x 1000 px = 250 000 µm². Three touching 100 x 100 px atrophic tubules
form one cluster with the 300 x 100 px box as hull: 7500 µm², IFTA 3 %. The model
predicts four more touching tubules 400 px lower, a separate 400 x 100 px cluster: 4 %
alone, and 7 % together with the reviewed ones.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from shapely.geometry import box

from apps.analysis.models import PatientReport
from apps.analysis.predictions import Prediction, write_run_predictions
from apps.annotations.models import Instance, ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.conftest import create_instance_record as add
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db

DOCS = Path(__file__).resolve().parents[2] / "docs" / "exports.md"
PX2_UM2 = 0.25
EXPECTED_HEADER = [
    "cohort", "patient_id", "section", "slide_id", "slide_name", "source", "model_version",
    "count_proximal_tubule", "count_distal_tubule", "count_atrophic_tubule", "count_glomerulus",
    "count_sclerotic_glomerulus", "count_vessel", "count_unspecified_tubule",
    "ifta_pct", "ifta_area_um2", "cortex_area_um2", "cortex_source", "glomerulosclerosis_pct",
    "banff_ci", "banff_ct", "report_ifta_pct", "reviewed_pct", "computed_at",
]
CLASS_NAMES = ["atrophic tubule", "glomerulus", "sclerotic glomerulus", "background"]


@pytest.fixture
def slide(convex):
    slide = create_slide_record(name="export-slide", mpp=0.5, cohort="C1", patient_id="P1",
                                section=2, report_ifta_pct=10.0)
    add(slide, box(0, 0, 1000, 1000), "cortex")
    for index in range(3):
        add(slide, box(100 + 100 * index, 100, 200 + 100 * index, 200), "atrophic tubule")
    add(slide, box(500, 300, 540, 340), "glomerulus")
    add(slide, box(600, 300, 640, 340), "glomerulus")
    add(slide, box(700, 300, 740, 340), "sclerotic glomerulus")
    add(slide, box(800, 800, 850, 850), "vessel", state=Instance.ReviewState.REJECTED)
    add(slide, box(900, 100, 950, 150), "proximal tubule", state=Instance.ReviewState.PENDING)
    return slide


@pytest.fixture
def model_version(slide, settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path)
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    version = ModelVersion.objects.create(
        name="export-model", status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=CLASS_NAMES, weights_path="/nonexistent/model.safetensors",
        weights_sha256="0" * 64,
    )
    run = ProposalRun.objects.create(
        slide=slide, model_version=version, status=ProposalRun.Status.SUCCEEDED,
        sam_type="class-aware", finished_at=timezone.now(),
    )
    write_run_predictions(run, [
        Prediction(geometry_level0=box(100 + 100 * i, 600, 200 + 100 * i, 700),
                   class_name="atrophic tubule", class_probability=0.9, predicted_iou=0.8)
        for i in range(4)
    ])
    return version


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    text = response.content.decode("utf-8")
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def documented_columns() -> list[str]:
    section = DOCS.read_text(encoding="utf-8").split("## Read-outs (CSV)", 1)[1]
    columns = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            columns.extend(re.findall(r"`([^`]+)`", first_cell))
    return columns


def test_header_equals_documented_columns(client_for, slide):
    rows = read_csv(client_for("pathologist").get(reverse("api-slide-readouts-csv", args=[slide.pk])))

    assert rows[0] == EXPECTED_HEADER
    assert documented_columns() == EXPECTED_HEADER


def test_reviewed_row_values(client_for, slide):
    PatientReport.objects.create(cohort="C1", patient_id="P1", report_ifta_pct=12.5)
    before = timezone.now() - timedelta(seconds=1)

    header, *rows = read_csv(client_for("admin").get(reverse("api-slide-readouts-csv", args=[slide.pk])))

    assert len(rows) == 1
    row = dict(zip(header, rows[0]))
    assert row["cohort"] == "C1"
    assert row["patient_id"] == "P1"
    assert row["section"] == "2"
    assert row["slide_id"] == str(slide.pk)
    assert row["slide_name"] == "export-slide"
    assert row["source"] == "reviewed"
    assert row["model_version"] == ""
    assert row["count_proximal_tubule"] == "0"
    assert row["count_atrophic_tubule"] == "3"
    assert row["count_glomerulus"] == "2"
    assert row["count_sclerotic_glomerulus"] == "1"
    assert row["count_vessel"] == "0"
    assert float(row["ifta_area_um2"]) == pytest.approx(300 * 100 * PX2_UM2, rel=1e-9)
    assert float(row["cortex_area_um2"]) == pytest.approx(1000 * 1000 * PX2_UM2, rel=1e-9)
    assert float(row["ifta_pct"]) == pytest.approx(300 * 100 / (1000 * 1000) * 100, rel=1e-9)
    assert row["cortex_source"] == "cortex annotation"
    assert float(row["glomerulosclerosis_pct"]) == pytest.approx(100 / 3, rel=1e-12)
    assert row["banff_ci"] == "0"
    assert row["banff_ct"] == "0"
    assert row["report_ifta_pct"] == "12.5"
    # 8 of the 9 instances are accepted or rejected, one is pending.
    assert float(row["reviewed_pct"]) == pytest.approx(800 / 9, rel=1e-12)
    computed_at = datetime.fromisoformat(row["computed_at"])
    assert computed_at.utcoffset() == timedelta(0)
    assert before <= computed_at <= timezone.now()


def test_model_and_combined_rows(client_for, slide, model_version):
    header, *rows = read_csv(client_for("pathologist").get(reverse("api-slide-readouts-csv", args=[slide.pk])))

    by_source = {row[header.index("source")]: dict(zip(header, row)) for row in rows}
    assert list(by_source) == ["reviewed", "model", "combined"]
    model = by_source["model"]
    combined = by_source["combined"]
    assert model["model_version"] == str(model_version.pk)
    assert combined["model_version"] == str(model_version.pk)
    assert model["count_atrophic_tubule"] == "4"
    assert model["count_glomerulus"] == "0"
    assert float(model["ifta_pct"]) == pytest.approx(4.0, rel=1e-9)
    assert combined["count_atrophic_tubule"] == "7"
    assert combined["count_glomerulus"] == "2"
    assert float(combined["ifta_pct"]) == pytest.approx(7.0, rel=1e-9)
    assert float(combined["ifta_area_um2"]) == pytest.approx(70000 * PX2_UM2, rel=1e-9)
    assert model["report_ifta_pct"] == "10.0"


def test_formula_cells_neutralised(client_for, convex):
    slide = create_slide_record(name="=HYPERLINK(\"x\")", cohort="@cohort", patient_id="-P1")

    header, row = read_csv(client_for("pathologist").get(reverse("api-slide-readouts-csv", args=[slide.pk])))

    values = dict(zip(header, row))
    assert values["slide_name"] == "'=HYPERLINK(\"x\")"
    assert values["cohort"] == "'@cohort"
    assert values["patient_id"] == "'-P1"


def test_missing_values_are_empty_cells(client_for, convex):
    slide = create_slide_record(name="bare")

    response = client_for("pathologist").get(reverse("api-slide-readouts-csv", args=[slide.pk]))

    header, row = read_csv(response)
    values = dict(zip(header, row))
    for column in ("section", "model_version", "ifta_pct", "cortex_source",
                   "glomerulosclerosis_pct", "banff_ci", "banff_ct", "report_ifta_pct",
                   "reviewed_pct"):
        assert values[column] == "", column
    assert values["ifta_area_um2"] == "0.0"
    assert values["count_atrophic_tubule"] == "0"
    assert "nan" not in response.content.decode().lower()


def test_cohort_export_filters(client_for, slide):
    other = create_slide_record(name="other", cohort="C2", patient_id="Q1")
    client = client_for("pathologist")

    header, *rows = read_csv(client.get(reverse("api-export-readouts-csv"), {"cohort": "C1"}))
    assert [row[header.index("slide_id")] for row in rows] == [str(slide.pk)]

    response = client.get(reverse("api-export-readouts-csv"))
    header, *rows = read_csv(response)
    assert sorted(row[header.index("slide_id")] for row in rows) == sorted([str(slide.pk), str(other.pk)])
    assert response["Content-Disposition"] == 'attachment; filename="readouts-all-cohorts.csv"'


def test_export_annotator_403(client_for, slide):
    response = client_for("annotator").get(reverse("api-export-readouts-csv"))

    assert response.status_code == 403


def test_unknown_or_blank_cohort(client_for, slide):
    client = client_for("pathologist")

    unknown = client.get(reverse("api-export-readouts-csv"), {"cohort": "nosuch"})
    blank = client.get(reverse("api-export-readouts-csv"), {"cohort": ""})

    assert unknown.status_code == 400
    assert unknown.json() == {"cohort": ["cohort: no slide is in cohort 'nosuch'. Known cohorts: 'C1'."]}
    assert blank["Content-Disposition"] == 'attachment; filename="readouts-all-cohorts.csv"'


def test_cohort_with_nul_character_rejected(client_for, slide):
    response = client_for("pathologist").get(
        reverse("api-export-readouts-csv"), {"cohort": "C1\x00"}
    )

    assert response.status_code == 400
    assert response.json() == {
        "cohort": ["cohort: the name contains a NUL character (\\x00). Remove it."]
    }
