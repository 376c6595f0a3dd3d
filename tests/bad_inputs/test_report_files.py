"""Bad report tables through ``import_reports`` and the dashboard's report import.

A table is imported whole or not at all. Each rejected table leaves the patient reports,
the slides' report values and the audit log exactly as they were. The command exits with
status 2 and prints one line per problem on stderr, each naming the file and, where there
is one, the line and column. The dashboard shows the same lines after "Nothing imported.".
"""

from __future__ import annotations

import html
import subprocess
import sys

import pytest
from django.urls import reverse

from apps.analysis.models import PatientReport
from apps.slides.models import Slide
from tests.bad_inputs import report_files
from tests.bad_inputs.conftest import assert_no_traceback, audited_actions, run_command
from tests.processes import REPO, child_environment

pytestmark = pytest.mark.django_db

PROCESS_TIMEOUT_S = 120
COLUMNS_RULE = (
    "The first line must name the columns patient and report_ifta_pct, and may name section "
    "and cohort."
)
NOT_A_NUMBER = "is not a number. Write a percentage such as 12.5 (no % sign, '.' as decimal point)."
OUTSIDE_RANGE = "is outside 0-100. Write a percentage, not a fraction (12.5, not 0.125)."
NO_SLIDE = "Import those slides with their patient id and section first, or correct the rows."
NOT_UTF8 = "{file} is not UTF-8 text. Save it as a UTF-8 CSV."

# Table -> the lines of the message, where {file} is the path (command) or name (upload).
EXPECTED_LINES = {
    "empty_file": [
        f"{{file}} line 1: missing the columns patient, report_ifta_pct. Found: no header. "
        f"{COLUMNS_RULE}",
    ],
    "header_only": ["{file} has a header but no rows. Add one row per report."],
    "free_text": [
        "{file} line 1: missing the columns patient, report_ifta_pct. Found: ifta about 20 "
        f"percent in p1. {COLUMNS_RULE}",
    ],
    "semicolons": [
        "{file} line 1: missing the columns patient, report_ifta_pct. Found: "
        f"patient;section;cohort;report_ifta_pct. {COLUMNS_RULE} Separate the columns with "
        "commas, not semicolons.",
    ],
    "tabs": [
        "{file} line 1: missing the columns patient, report_ifta_pct. Found: "
        f"patient\tsection\tcohort\treport_ifta_pct. {COLUMNS_RULE} Separate the columns with "
        "commas, not tabs.",
    ],
    "missing_ifta_column": [
        "{file} line 1: missing the columns report_ifta_pct. Found: patient, section, cohort, "
        f"ifta. {COLUMNS_RULE}",
    ],
    "repeated_column": [
        "{file} line 1: the column section appears more than once. Keep one column of each name.",
    ],
    "comma_decimal": [
        "{file} line 2: 5 cells, but the header names 4 columns. Quote a value that contains a "
        "comma, and write decimals with '.' (12.5, not 12,5).",
    ],
    "non_numeric_ifta": [f"{{file}} line 3, column report_ifta_pct: 'twelve' {NOT_A_NUMBER}"],
    "percent_sign": [f"{{file}} line 3, column report_ifta_pct: '30%' {NOT_A_NUMBER}"],
    "nan_ifta": [f"{{file}} line 3, column report_ifta_pct: 'NaN' {NOT_A_NUMBER}"],
    "infinite_ifta": [
        "{file} line 3, column report_ifta_pct: '1e999' is not a finite number. Write a "
        "percentage from 0 to 100.",
    ],
    "ifta_above_100": [f"{{file}} line 3, column report_ifta_pct: 112 {OUTSIDE_RANGE}"],
    "negative_ifta": [f"{{file}} line 3, column report_ifta_pct: -3 {OUTSIDE_RANGE}"],
    "empty_ifta": [
        "{file} line 3, column report_ifta_pct: the cell is empty. Fill in a percentage.",
    ],
    "section_not_whole": [
        "{file} line 3, column section: '1.5' is not a non-negative whole number. Leave it "
        "empty for a report of the whole patient.",
    ],
    "empty_patient": ["{file} line 4, column patient: the cell is empty. Fill in the patient id."],
    "patient_too_long": [
        "{file} line 4, column patient: longer than 64 characters, so no slide can have this "
        "patient id. Write the patient id as the slides have it.",
    ],
    "duplicate_rows": [
        "{file} line 5: patient 'P1' section 1 in cohort 'C1' has a report on line 2 already. "
        "Keep one row per section or patient.",
    ],
    "unknown_patient": [
        "{file}: 1 row matches no slide (columns patient, section, cohort): line 5: patient "
        f"'P9' section 1 in cohort 'C1'. {NO_SLIDE}",
    ],
    "unknown_section": [
        "{file}: 1 row matches no slide (columns patient, section, cohort): line 5: patient "
        f"'P1' section 7 in cohort 'C1'. {NO_SLIDE}",
    ],
    "nul_byte": [
        "{file} line 3: contains a NUL character, so it is not a text CSV file. Save it as a "
        "UTF-8 CSV.",
    ],
    "unclosed_quote": ["{file} line 4: invalid CSV: unexpected end of data."],
    "two_bad_rows": [
        f"{{file}} line 2, column report_ifta_pct: 'twelve' {NOT_A_NUMBER}",
        f"{{file}} line 3, column report_ifta_pct: 130 {OUTSIDE_RANGE}",
    ],
    "png_named_csv": [NOT_UTF8],
    "excel_unicode_text": [NOT_UTF8],
}


@pytest.fixture
def report_slides():
    """The good table's slides, one slide report and one patient report set before."""
    slides = report_files.create_report_slides()
    Slide.objects.filter(pk=slides["p1s1"].pk).update(report_ifta_pct=5.0)
    PatientReport.objects.create(cohort="C2", patient_id="P2", report_ifta_pct=40.0)
    return slides


def _stored_reports() -> tuple[list, list, int]:
    """Return every stored report value and the number of audited report imports."""
    slides = list(Slide.objects.order_by("name").values_list("name", "report_ifta_pct"))
    patients = list(
        PatientReport.objects.order_by("id").values_list("cohort", "patient_id", "report_ifta_pct")
    )
    return slides, patients, audited_actions().count("import")


STORED_BEFORE = (
    [("p1s1", 5.0), ("p1s2", None), ("p2s1", None)],
    [("C2", "P2", 40.0)],
    0,
)


def _write(case: str, shared_data, folder):
    if case == "png_named_csv":
        return report_files.png_named_csv(shared_data, folder)
    if case == "excel_unicode_text":
        return report_files.excel_unicode_text(folder)
    return report_files.write_table(folder, "reports.csv", report_files.TEXT_TABLES[case])


def test_every_text_table_has_expected_lines():
    assert set(report_files.TEXT_TABLES) | {"png_named_csv", "excel_unicode_text"} == set(
        EXPECTED_LINES
    )


@pytest.mark.parametrize("case", sorted(EXPECTED_LINES))
def test_command_rejects_table(case, report_slides, shared_data, inputs_dir):
    path = _write(case, shared_data, inputs_dir)
    assert _stored_reports() == STORED_BEFORE

    result = run_command("import_reports", str(path))

    assert result.exit_code == 2
    assert result.stdout == ""
    expected = [line.format(file=path) for line in EXPECTED_LINES[case]]
    assert result.stderr.splitlines() == ["CommandError: " + expected[0], *expected[1:]]
    assert_no_traceback(result.stderr)
    assert _stored_reports() == STORED_BEFORE


@pytest.mark.parametrize("case", sorted(EXPECTED_LINES))
def test_dashboard_rejects_table(case, report_slides, client_for, shared_data, inputs_dir):
    path = _write(case, shared_data, inputs_dir)

    with path.open("rb") as upload:
        response = client_for("pathologist").post(
            reverse("dashboard-report-import"), {"file": upload}, follow=True
        )

    assert response.status_code == 200
    page = response.content.decode()
    expected = [line.format(file=path.name) for line in EXPECTED_LINES[case]]
    page_message = "Nothing imported. " + "\n".join(expected)
    assert "<br>".join(html.escape(line) for line in page_message.split("\n")) in page
    assert "Imported reports.csv" not in page
    assert_no_traceback(page)
    assert _stored_reports() == STORED_BEFORE


def test_dashboard_without_file(report_slides, client_for):
    response = client_for("pathologist").post(reverse("dashboard-report-import"), {}, follow=True)

    assert "Report import: no file was sent. Choose a CSV file." in response.content.decode()
    assert _stored_reports() == STORED_BEFORE


@pytest.mark.parametrize("case", ["folder", "missing"])
def test_command_rejects_unreadable_path(case, report_slides, inputs_dir):
    path = inputs_dir if case == "folder" else inputs_dir / "absent.csv"
    reason = "Is a directory" if case == "folder" else "No such file or directory"

    result = run_command("import_reports", str(path))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"CommandError: Cannot read {path}: {reason}. Check the path.\n"
    assert _stored_reports() == STORED_BEFORE


def test_good_table_imports_all_rows(report_slides, inputs_dir):
    path = report_files.write_table(inputs_dir, "reports.csv", report_files.good_table())

    result = run_command("import_reports", str(path))

    assert result.exit_code == 0
    assert result.stdout == f"imported {path}: 3 section reports, 0 patient reports\n"
    slides, patients, imports = _stored_reports()
    assert slides == [("p1s1", 12.5), ("p1s2", 30.0), ("p2s1", 0.0)]
    assert patients == [("C2", "P2", 40.0)]
    assert imports == 1


def test_report_header_case_ignored(report_slides, inputs_dir):
    path = report_files.write_table(
        inputs_dir, "reports.csv", "Patient,Section,Cohort,Report_IFTA_pct\nP1,2,C1,-0\n"
    )

    result = run_command("import_reports", str(path))

    assert result.exit_code == 0
    # "-0" is stored as 0, not as the float -0.0.
    assert str(Slide.objects.get(name="p1s2").report_ifta_pct) == "0.0"


def test_import_reports_process_exit_2(inputs_dir, tmp_path):
    path = report_files.write_table(
        inputs_dir, "reports.csv", report_files.TEXT_TABLES["comma_decimal"]
    )

    completed = subprocess.run(
        [sys.executable, "manage.py", "import_reports", str(path)], cwd=REPO,
        env=child_environment(tmp_path / "data"), capture_output=True, text=True,
        timeout=PROCESS_TIMEOUT_S,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"CommandError: {path} line 2: 5 cells, but the header names 4 columns. Quote a value "
        "that contains a comma, and write decimals with '.' (12.5, not 12,5)."
    ]
    assert_no_traceback(completed.stderr)
