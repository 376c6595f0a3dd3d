"""Agreement dashboard: statistics against independent computations, figures, report import.

Each section has an accepted 4000 x 1000 px "cortex" outline and three touching atrophic
tubules of w x 400 px in a row. The three form one cluster whose hull is their
3w x 400 px bounding box, so the section's IFTA is 1200 w / 4 000 000 * 100 = 0.03 w %.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image
from scipy import stats
from shapely.geometry import box

from apps.analysis.models import PatientReport
from apps.analysis.reports import MAX_REPORT_CSV_BYTES, ReportError, import_reports
from apps.slides.models import Slide
from tests.conftest import create_instance_record as add_instance
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db

REPOSITORY = Path(__file__).resolve().parents[2]
CORTEX_AREA_PX2 = 4000 * 1000
COHORT = "C1"
# Patient: (tubule widths of sections 1 and 2 in px, reported IFTA %).
FIVE_PATIENTS = {
    "P1": ((100, 300), 5.0),
    "P2": ((200, 400), 12.0),
    "P3": ((500, 500), 14.0),
    "P4": ((600, 800), 25.0),
    "P5": ((900, 1000), 22.0),
}


def section_ifta_pct(width_px: int) -> float:
    return 3 * width_px * 400 / CORTEX_AREA_PX2 * 100


def make_section(patient_id, section, width_px, cohort=COHORT, report_ifta_pct=None):
    slide = create_slide_record(
        name=f"{patient_id}-s{section}", mpp=0.5, cohort=cohort, patient_id=patient_id,
        section=section, report_ifta_pct=report_ifta_pct,
    )
    add_instance(slide, box(0, 0, 4000, 1000), "cortex")
    for index in range(3):
        x_min = 100 + index * width_px
        add_instance(slide, box(x_min, 100, x_min + width_px, 500), "atrophic tubule")
    return slide


def make_cohort(patients):
    for patient_id, (widths, reported) in patients.items():
        for section, width_px in enumerate(widths, start=1):
            make_section(patient_id, section, width_px)
        PatientReport.objects.create(cohort=COHORT, patient_id=patient_id, report_ifta_pct=reported)


def patient_means(patients):
    predicted = np.array([np.mean([section_ifta_pct(w) for w in widths])
                          for widths, _ in patients.values()])
    reported = np.array([reported for _, reported in patients.values()])
    return predicted, reported


def t_test_p(r: float, n: int) -> float:
    """Two-sided p of a correlation by the t distribution with n - 2 degrees of freedom."""
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * stats.t.sf(abs(t), n - 2))


def numbers_block(html: str) -> str:
    match = re.search(r'<dl class="dashboard-numbers" id="agreement-numbers">(.*?)</dl>', html, re.S)
    assert match is not None
    return match.group(1)


def numbers_value(html: str, term: str) -> str:
    match = re.search(rf"<dt>{re.escape(term)}</dt>\s*<dd>(.*?)</dd>", numbers_block(html), re.S)
    assert match is not None, term
    return match.group(1).strip()


def test_dashboard_statistics_five_patients(client_for, convex):
    make_cohort(FIVE_PATIENTS)
    predicted, reported = patient_means(FIVE_PATIENTS)
    n = 5
    r = float(np.corrcoef(predicted, reported)[0, 1])
    rank_predicted = stats.rankdata(predicted)
    rank_reported = stats.rankdata(reported)
    rho = float(np.corrcoef(rank_predicted, rank_reported)[0, 1])
    z = math.atanh(r)
    half_width = stats.norm.ppf(0.975) / math.sqrt(n - 3)
    ci_low, ci_high = math.tanh(z - half_width), math.tanh(z + half_width)
    differences = predicted - reported
    bias = float(np.mean(differences))
    sd = float(np.std(differences, ddof=1))

    response = client_for("pathologist").get(reverse("dashboard"), {"source": "reviewed", "cohort": COHORT})

    assert response.status_code == 200
    result = response.context["result"]
    assert result.n_patients == n
    assert [p.predicted_pct for p in result.patients] == pytest.approx(list(predicted), rel=1e-12)
    assert [p.reported_pct for p in result.patients] == pytest.approx(list(reported), rel=1e-12)
    assert result.pearson_r == pytest.approx(r, rel=1e-12)
    assert result.pearson_ci95[0] == pytest.approx(ci_low, rel=1e-12)
    assert result.pearson_ci95[1] == pytest.approx(ci_high, rel=1e-12)
    assert result.pearson_p == pytest.approx(t_test_p(r, n), rel=1e-9)
    assert result.spearman_rho == pytest.approx(rho, rel=1e-12)
    # Five patients: exact p over all 120 orderings of the reported means.
    as_extreme = sum(
        abs(np.corrcoef(rank_predicted, order)[0, 1]) >= abs(rho) - 1e-12
        for order in itertools.permutations(rank_reported)
    )
    assert result.spearman_p == pytest.approx(as_extreme / 120, rel=1e-12)
    assert result.bland_altman_bias_pct == pytest.approx(bias, rel=1e-12)
    assert result.bland_altman_sd_pct == pytest.approx(sd, rel=1e-12)
    assert result.bland_altman_loa95_pct[0] == pytest.approx(bias - 1.96 * sd, rel=1e-12)
    assert result.bland_altman_loa95_pct[1] == pytest.approx(bias + 1.96 * sd, rel=1e-12)

    html = response.content.decode()
    assert numbers_value(html, "Patients (n)") == "5"
    assert numbers_value(html, "Pearson r") == f"{r:.3f}"
    assert numbers_value(html, "95 % CI of r (Fisher z)") == f"{ci_low:.3f} to {ci_high:.3f}"
    assert f"{rho:.3f}" in numbers_value(html, "Spearman rho")
    assert numbers_value(html, "Bland-Altman bias").startswith(f"{bias:.2f} percentage points")
    patient_rows = response.context["agreement"].patients
    assert [row.label for row in patient_rows] == list(FIVE_PATIENTS)
    assert [len(row.sections) for row in patient_rows] == [2] * 5
    assert response.context["agreement"].left_out == ()


def test_dashboard_three_patients_no_ci(client_for, convex):
    patients = {key: FIVE_PATIENTS[key] for key in ("P1", "P2", "P4")}
    make_cohort(patients)
    predicted, reported = patient_means(patients)

    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": COHORT})

    html = response.content.decode()
    result = response.context["result"]
    assert result.n_patients == 3
    assert result.pearson_r == pytest.approx(float(np.corrcoef(predicted, reported)[0, 1]), rel=1e-12)
    assert result.pearson_ci95 is None
    assert numbers_value(html, "95 % CI of r (Fisher z)") == (
        "not computed: the Fisher z interval needs at least 4 patients, and there are 3"
    )


def test_dashboard_equal_predictions_undefined_r(client_for, convex):
    # Every section has 6 % predicted IFTA; the reports differ.
    for patient_id, reported in (("P1", 3.0), ("P2", 8.0), ("P3", 15.0)):
        make_section(patient_id, 1, 200)
        PatientReport.objects.create(cohort=COHORT, patient_id=patient_id, report_ifta_pct=reported)

    response = client_for("admin").get(reverse("dashboard"), {"cohort": COHORT})

    html = response.content.decode()
    assert response.context["result"].pearson_r is None
    r_text = numbers_value(html, "Pearson r")
    assert r_text == "undefined: all predicted values are equal (no variance)"
    assert "1.00" not in numbers_block(html)
    assert numbers_value(html, "Spearman rho") == "undefined"


def test_dashboard_two_patients_no_r(client_for, convex):
    make_cohort({key: FIVE_PATIENTS[key] for key in ("P1", "P2")})

    response = client_for("pathologist").get(reverse("dashboard"))

    assert numbers_value(response.content.decode(), "Pearson r") == "undefined: fewer than 3 patients"


def test_dashboard_lists_left_out_slides(client_for, convex):
    make_cohort(FIVE_PATIENTS)
    unreported = make_section("P9", 1, 300)
    no_cortex = create_slide_record(name="bare", cohort=COHORT, patient_id="P8", report_ifta_pct=10.0)

    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": COHORT})

    left_out = {item.slide.pk: item.reason for item in response.context["agreement"].left_out}
    assert set(left_out) == {unreported.pk, no_cortex.pk}
    assert left_out[unreported.pk] == (
        "no reported IFTA % (neither a patient report nor a section report)"
    )
    assert left_out[no_cortex.pk].startswith("no predicted IFTA %: ")
    assert response.context["result"].n_patients == 5


def test_section_report_used_without_patient_report(client_for, convex):
    make_section("Q1", 1, 100, report_ifta_pct=4.0)
    make_section("Q1", 2, 300, report_ifta_pct=8.0)

    response = client_for("pathologist").get(reverse("dashboard"))

    (patient,) = response.context["result"].patients
    assert patient.predicted_pct == pytest.approx((3.0 + 9.0) / 2, rel=1e-12)
    assert patient.reported_pct == pytest.approx(6.0, rel=1e-12)


def test_dashboard_unknown_source_400(client_for):
    response = client_for("pathologist").get(reverse("dashboard"), {"source": "model:999"})

    assert response.status_code == 400
    assert "model version 999 does not exist" in response.content.decode()


def test_figures_png_size(client_for, convex):
    make_cohort(FIVE_PATIENTS)
    client = client_for("pathologist")

    for name, size_px in (("dashboard-scatter-png", (640, 640)),
                          ("dashboard-bland-altman-png", (800, 560))):
        response = client.get(reverse(name), {"source": "reviewed", "cohort": COHORT})
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert "Content-Disposition" not in response
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG"
        assert image.size == size_px


def test_figure_download_names_source_and_cohort(client_for, convex):
    make_cohort(FIVE_PATIENTS)

    response = client_for("pathologist").get(
        reverse("dashboard-bland-altman-png"), {"source": "reviewed", "cohort": COHORT, "download": "1"}
    )

    assert response["Content-Disposition"] == 'attachment; filename="bland-altman-reviewed-c1.png"'


def test_figures_without_patients(client_for):
    response = client_for("pathologist").get(reverse("dashboard-scatter-png"))

    assert Image.open(io.BytesIO(response.content)).size == (640, 640)


def test_patient_table_through_ml_agreement_cli(client_for, convex, tmp_path):
    make_cohort(FIVE_PATIENTS)
    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": COHORT})
    table = tmp_path / "patients.csv"
    with table.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["patient", "section", "predicted", "reported"])
        for row in response.context["agreement"].patients:
            writer.writerow([row.label, "mean", repr(row.predicted_pct), repr(row.reported_pct)])

    completed = subprocess.run(
        [sys.executable, "-m", "ml.agreement", str(table)], cwd=REPOSITORY,
        capture_output=True, text=True, check=True,
    )

    output = json.loads(completed.stdout)
    assert output["n_patients"] == 5
    assert output["pearson_r"] == pytest.approx(response.context["result"].pearson_r, rel=1e-12)
    assert output["pearson_ci95"] == pytest.approx(list(response.context["result"].pearson_ci95), rel=1e-12)


def test_patient_report_entry_sets_and_clears(client_for, convex):
    make_section("P1", 1, 100)
    client = client_for("pathologist")
    next_url = reverse("dashboard") + f"?source=reviewed&cohort={COHORT}"

    response = client.post(reverse("dashboard-patient-report"), {
        "cohort": COHORT, "patient_id": "P1", "report_ifta_pct": "7.5", "next": next_url,
    })

    assert response.status_code == 302
    assert response["Location"] == next_url
    assert PatientReport.objects.get(cohort=COHORT, patient_id="P1").report_ifta_pct == 7.5

    client.post(reverse("dashboard-patient-report"), {
        "cohort": COHORT, "patient_id": "P1", "report_ifta_pct": "", "next": next_url,
    })

    assert not PatientReport.objects.exists()


def test_patient_report_entry_rejects_out_of_range(client_for, convex):
    make_section("P1", 1, 100)
    client = client_for("pathologist")

    response = client.post(reverse("dashboard-patient-report"), {
        "cohort": COHORT, "patient_id": "P1", "report_ifta_pct": "120",
    }, follow=True)

    assert not PatientReport.objects.exists()
    assert "report_ifta_pct: 120 is outside 0-100" in response.content.decode()


def test_patient_report_entry_annotator_403(client_for, convex):
    make_section("P1", 1, 100)

    response = client_for("annotator").post(reverse("dashboard-patient-report"), {
        "cohort": COHORT, "patient_id": "P1", "report_ifta_pct": "7.5",
    })

    assert response.status_code == 403
    assert not PatientReport.objects.exists()


def write_csv(tmp_path, text: str, name: str = "reports.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def report_slides():
    return {
        "p1s1": create_slide_record(name="p1s1", cohort=COHORT, patient_id="P1", section=1),
        "p1s2": create_slide_record(name="p1s2", cohort=COHORT, patient_id="P1", section=2),
        "p2s1": create_slide_record(name="p2s1", cohort="C2", patient_id="P2", section=1),
    }


def test_import_reports_writes_rows(tmp_path, report_slides):
    path = write_csv(tmp_path, (
        "patient,section,cohort,report_ifta_pct\n"
        "P1,,C1,12.5\n"
        "P1,2,,30\n"
        "P2,1,C2,0\n"
        "P2,,,100\n"
    ))

    result = import_reports(path)

    assert (result.slide_reports, result.patient_reports) == (2, 2)
    reports = {(r.cohort, r.patient_id): r.report_ifta_pct for r in PatientReport.objects.all()}
    assert reports == {(COHORT, "P1"): 12.5, ("C2", "P2"): 100.0}
    values = {s.name: s.report_ifta_pct for s in Slide.objects.all()}
    assert values == {"p1s1": None, "p1s2": 30.0, "p2s1": 0.0}


def test_import_reports_command(tmp_path, report_slides):
    path = write_csv(tmp_path, "patient,report_ifta_pct\nP1,20\n")
    output = io.StringIO()

    call_command("import_reports", str(path), stdout=output)

    assert output.getvalue().strip() == f"imported {path}: 0 section reports, 1 patient reports"
    assert PatientReport.objects.get().report_ifta_pct == 20.0


def test_import_reports_command_exit_2(tmp_path, report_slides):
    path = write_csv(tmp_path, "patient,report_ifta_pct\nP1,abc\n")

    with pytest.raises(CommandError) as caught:
        call_command("import_reports", str(path))

    assert caught.value.returncode == 2
    assert f"{path} line 2, column report_ifta_pct: 'abc' is not a number" in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("patient,section,report_ifta_pct\nP1,1,12\nP1,2,twelve\n",
     "line 3, column report_ifta_pct: 'twelve' is not a number"),
    ("patient,section,report_ifta_pct\nP1,1,12\nP1,2,112\n",
     "line 3, column report_ifta_pct: 112 is outside 0-100"),
    ("patient,section,report_ifta_pct\nP1,1,12\nP7,1,20\nP1,9,20\n",
     "2 rows match no slide (columns patient, section, cohort): line 3: patient 'P7' section 1; "
     "line 4: patient 'P1' section 9"),
    ("patient,section,ifta\nP1,1,12\n", "line 1: missing the columns report_ifta_pct"),
    ("patient;section;report_ifta_pct\nP1;1;12\n",
     "Separate the columns with commas, not semicolons."),
    ("patient,section,report_ifta_pct\n,1,12\n", "line 2, column patient: the cell is empty"),
    ("patient,section,report_ifta_pct\nP1,first,12\n",
     "line 2, column section: 'first' is not a non-negative whole number"),
    ("patient,section,report_ifta_pct\nP1,,10\nP1,1,12\nP1,,11\n",
     "line 4: patient 'P1' has a report on line 2 already"),
    ("patient,section,report_ifta_pct\nP1,1,10\nP1,1,12\n",
     "line 3: patient 'P1' section 1 has a report on line 2 already"),
])
def test_import_reports_error_writes_nothing(tmp_path, report_slides, text, message):
    path = write_csv(tmp_path, text)

    with pytest.raises(ReportError) as caught:
        import_reports(path)

    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert not PatientReport.objects.exists()
    assert list(Slide.objects.values_list("report_ifta_pct", flat=True)) == [None, None, None]


def test_import_reports_ambiguous_cohort(tmp_path, report_slides):
    create_slide_record(name="p1-other", cohort="C2", patient_id="P1", section=3)
    path = write_csv(tmp_path, "patient,report_ifta_pct\nP1,12\n")

    with pytest.raises(ReportError) as caught:
        import_reports(path)

    assert "line 2, column cohort: patient 'P1' has slides in the cohorts 'C1', 'C2'" in str(caught.value)


def test_report_upload_imports(client_for, report_slides):
    upload = SimpleUploadedFile("reports.csv", b"patient,section,report_ifta_pct\nP1,1,42\n")

    response = client_for("pathologist").post(
        reverse("dashboard-report-import"), {"file": upload}, follow=True
    )

    assert "Imported reports.csv: 1 section reports, 0 patient reports." in response.content.decode()
    assert Slide.objects.get(name="p1s1").report_ifta_pct == 42.0


def test_report_upload_size_limit(client_for, report_slides):
    body = b"patient,section,report_ifta_pct\n" + b"P1,1,42\n" * (MAX_REPORT_CSV_BYTES // 8 + 1)
    assert len(body) > MAX_REPORT_CSV_BYTES
    upload = SimpleUploadedFile("big.csv", body)

    response = client_for("pathologist").post(
        reverse("dashboard-report-import"), {"file": upload}, follow=True
    )

    html = response.content.decode()
    assert (
        f"Nothing imported. big.csv: {len(body):,} bytes exceed the limit of 1 MB (1,048,576 "
        "bytes) for report files" in html
    )
    assert Slide.objects.get(name="p1s1").report_ifta_pct is None


def test_report_upload_error_shown(client_for, report_slides):
    upload = SimpleUploadedFile("bad.csv", b"patient,report_ifta_pct\nP1,-3\n")

    response = client_for("admin").post(
        reverse("dashboard-report-import"), {"file": upload}, follow=True
    )

    assert "bad.csv line 2, column report_ifta_pct: -3 is outside 0-100" in response.content.decode()
    assert not PatientReport.objects.exists()


def test_dashboard_nav_link(client_for):
    assert 'href="/dashboard/"' in client_for("pathologist").get(reverse("slide-list")).content.decode()


def test_warnings_name_the_patient_as_users_know_it(client_for, convex):
    make_section("P1", 1, 100, report_ifta_pct=10.0)
    make_section("P1", 2, 200, report_ifta_pct=20.0)

    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": COHORT})

    warnings = " ".join(response.context["result"].warnings)
    assert "patient P1 (cohort C1): sections report different IFTA values" in warnings
    assert "|" not in warnings


def test_unknown_cohort_is_named(client_for, convex):
    make_cohort({"P1": FIVE_PATIENTS["P1"]})

    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": "nosuch"})

    assert response.status_code == 400
    assert "cohort: no slide is in cohort &#x27;nosuch&#x27;. Known cohorts: &#x27;C1&#x27;." in response.content.decode()


def test_cohort_with_nul_character_is_named(client_for, convex):
    make_cohort({"P1": FIVE_PATIENTS["P1"]})

    response = client_for("pathologist").get(reverse("dashboard"), {"cohort": "C1\x00"})

    assert response.status_code == 400
    expected = "cohort: the name contains a NUL character (\\x00). Remove it."
    assert expected in response.content.decode()
