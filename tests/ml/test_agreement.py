"""Tests for ml.agreement against formulas evaluated separately in each test."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr
from scipy.stats import t as student_t

from ml.agreement import AgreementError, agreement, pearson_ci95

REPO_ROOT = Path(__file__).resolve().parents[2]
Z_975 = statistics.NormalDist().inv_cdf(0.975)

# Six patients, one to three sections each. Patient means worked out by hand:
# P1 (10 + 14 + 12) / 3 = 12, P2 (30 + 34) / 2 = 32, P3 5, P4 (40 + 44 + 48) / 3 = 44,
# P5 20, P6 (60 + 70) / 2 = 65.
TABLE = [
    ("P1", "s1", 10.0, 15.0), ("P1", "s2", 14.0, 15.0), ("P1", "s3", 12.0, 15.0),
    ("P2", "s1", 30.0, 25.0), ("P2", "s2", 34.0, 25.0),
    ("P3", "s1", 5.0, 10.0),
    ("P4", "s1", 40.0, 50.0), ("P4", "s2", 44.0, 50.0), ("P4", "s3", 48.0, 50.0),
    ("P5", "s1", 20.0, 10.0),
    ("P6", "s1", 60.0, 55.0), ("P6", "s2", 70.0, 55.0),
]
PREDICTED_MEANS = [12.0, 32.0, 5.0, 44.0, 20.0, 65.0]
REPORTED = [15.0, 25.0, 10.0, 50.0, 10.0, 55.0]


def test_agreement_patient_means() -> None:
    result = agreement(TABLE)

    assert result.n_patients == 6
    assert [p.patient for p in result.patients] == ["P1", "P2", "P3", "P4", "P5", "P6"]
    assert [p.predicted_pct for p in result.patients] == pytest.approx(PREDICTED_MEANS)
    assert [p.reported_pct for p in result.patients] == pytest.approx(REPORTED)
    assert [p.n_sections for p in result.patients] == [3, 2, 1, 3, 1, 2]
    assert result.n_rows_used == 12
    assert result.warnings == ()
    assert result.notes == ()


def test_agreement_pearson_and_ci() -> None:
    result = agreement(TABLE)

    n = 6
    r = np.corrcoef(PREDICTED_MEANS, REPORTED)[0, 1]
    z = math.atanh(r)
    half_width = Z_975 / math.sqrt(n - 3)
    t_statistic = r * math.sqrt((n - 2) / (1 - r**2))
    p_value = 2 * student_t.sf(abs(t_statistic), n - 2)
    assert result.pearson_r == pytest.approx(r, rel=1e-12)
    assert result.pearson_ci95 == pytest.approx((math.tanh(z - half_width),
                                                 math.tanh(z + half_width)), rel=1e-12)
    assert result.pearson_p == pytest.approx(p_value, rel=1e-9)


def test_agreement_spearman() -> None:
    result = agreement(TABLE)

    rho = np.corrcoef(rankdata(PREDICTED_MEANS), rankdata(REPORTED))[0, 1]
    assert result.spearman_rho == pytest.approx(rho, rel=1e-12)
    assert 0.0 < result.spearman_p < 1.0


def test_agreement_bland_altman() -> None:
    result = agreement(TABLE)

    differences = [p - r for p, r in zip(PREDICTED_MEANS, REPORTED)]
    assert differences == [-3.0, 7.0, -5.0, -6.0, 10.0, 10.0]
    bias = sum(differences) / 6
    sd = math.sqrt(sum((d - bias) ** 2 for d in differences) / 5)
    assert result.bland_altman_bias_pct == pytest.approx(bias)
    assert result.bland_altman_sd_pct == pytest.approx(sd)
    assert result.bland_altman_loa95_pct == pytest.approx((bias - 1.96 * sd, bias + 1.96 * sd))


def test_pearson_ci95_formula() -> None:
    # r = 0.5 with n = 28: SE = 1/5, so the bounds are tanh(atanh(0.5) -/+ 1.96 / 5), which
    # rounds to 0.1560 and 0.7358.
    low, high = pearson_ci95(0.5, 28)

    assert low == pytest.approx(math.tanh(0.5493061443340549 - Z_975 / 5))
    assert high == pytest.approx(math.tanh(0.5493061443340549 + Z_975 / 5))
    assert low == pytest.approx(0.1560, abs=1e-4)
    assert high == pytest.approx(0.7358, abs=1e-4)


def test_pearson_ci95_invalid() -> None:
    with pytest.raises(AgreementError, match="n >= 4"):
        pearson_ci95(0.5, 3)
    with pytest.raises(AgreementError, match="-1 to 1"):
        pearson_ci95(1.2, 10)


def test_agreement_three_patients_no_ci() -> None:
    table = [("A", "1", 10.0, 12.0), ("B", "1", 20.0, 18.0), ("C", "1", 35.0, 40.0)]
    result = agreement(table)

    assert result.n_patients == 3
    assert result.pearson_r == pytest.approx(np.corrcoef([10, 20, 35], [12, 18, 40])[0, 1])
    assert result.pearson_ci95 is None
    assert any("confidence interval" in note and "at least 4" in note for note in result.notes)


def test_agreement_two_patients_no_r() -> None:
    result = agreement([("A", "1", 10.0, 12.0), ("B", "1", 20.0, 18.0)])

    assert result.pearson_r is None
    assert result.spearman_rho is None
    assert result.bland_altman_bias_pct == pytest.approx(0.0)
    assert result.bland_altman_sd_pct == pytest.approx(math.sqrt(((-2) ** 2 + 2**2) / 1))
    assert any("at least 3" in note for note in result.notes)


def test_agreement_constant_predicted() -> None:
    table = [(f"P{i}", "1", 20.0, float(10 * i)) for i in range(6)]
    result = agreement(table)

    assert result.pearson_r is None
    assert result.pearson_ci95 is None
    assert result.pearson_p is None
    assert result.spearman_rho is None
    assert "constant predicted values: r undefined" in result.notes[0]
    assert result.bland_altman_bias_pct == pytest.approx(20.0 - 25.0)


def test_agreement_constant_reported() -> None:
    table = [(f"P{i}", "1", float(10 * i), 30.0) for i in range(5)]
    result = agreement(table)

    assert result.pearson_r is None
    assert any("constant reported values" in note for note in result.notes)


def test_agreement_perfect_correlation() -> None:
    table = [(f"P{i}", "1", float(i), float(2 * i + 1)) for i in range(5)]
    result = agreement(table)

    assert result.pearson_r == pytest.approx(1.0)
    assert result.pearson_ci95 == pytest.approx((1.0, 1.0))
    json.dumps(result.to_dict(), allow_nan=False)


def test_agreement_conflicting_reports() -> None:
    table = [("A", "1", 10.0, 10.0), ("A", "2", 20.0, 20.0), ("B", "1", 5.0, 5.0)]
    result = agreement(table)

    assert result.patients[0].reported_pct == pytest.approx(15.0)
    assert result.patients[0].predicted_pct == pytest.approx(15.0)
    assert len(result.warnings) == 1
    assert "patient A" in result.warnings[0]
    assert "mean is used" in result.warnings[0]


def test_agreement_duplicate_section_warns() -> None:
    result = agreement([("A", "1", 10.0, 10.0), ("A", "1", 12.0, 10.0)])

    assert result.patients[0].n_sections == 2
    assert any("appear more than once" in warning for warning in result.warnings)


def test_agreement_missing_values_skipped() -> None:
    table = TABLE + [("P7", "s1", None, 20.0), ("P7", "s2", math.nan, math.nan),
                     ("P1", "s4", 90.0, math.nan)]
    result = agreement(table)

    assert result.n_patients == 6
    assert result.n_rows_used == 12
    assert [row.row_index for row in result.skipped_rows] == [12, 13, 14]
    assert [row.reason for row in result.skipped_rows] == [
        "missing predicted value", "missing predicted and reported value",
        "missing reported value",
    ]
    assert result.pearson_r == pytest.approx(np.corrcoef(PREDICTED_MEANS, REPORTED)[0, 1])


def test_agreement_empty_table() -> None:
    result = agreement([])

    assert result.n_patients == 0
    assert result.pearson_r is None
    assert result.bland_altman_bias_pct is None


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (("A", "1", 120.0, 10.0), "predicted_pct = 120.0 is outside 0-100"),
        (("A", "1", 10.0, -1.0), "reported_pct = -1.0 is outside 0-100"),
        (("A", "1", "12", 10.0), "must be a number"),
        (("", "1", 1.0, 1.0), "empty patient id"),
        (("A", "1", 1.0), r"must be \(patient, section"),
    ],
)
def test_agreement_invalid_row(row: tuple, match: str) -> None:
    with pytest.raises(AgreementError, match=match):
        agreement([("B", "1", 5.0, 5.0), row])


def run_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml.agreement", str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )


def reject_constant(name: str) -> None:
    raise AssertionError(f"JSON output contains {name}")


def test_cli_good_file(tmp_path: Path) -> None:
    lines = ["patient,section,predicted,reported,comment"]
    lines += [f"{p},{s},{pred},{rep},ok" for p, s, pred, rep in TABLE]
    lines += ["P7,s1,NA,20,no prediction"]
    table_csv = tmp_path / "table.csv"
    table_csv.write_text("\n".join(lines) + "\n", encoding="utf-8")

    completed = run_cli(table_csv)

    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout, parse_constant=reject_constant)
    assert output["n_patients"] == 6
    assert output["pearson_r"] == pytest.approx(np.corrcoef(PREDICTED_MEANS, REPORTED)[0, 1])
    assert len(output["pearson_ci95"]) == 2
    assert output["skipped_rows"] == [
        {"row_index": 12, "patient": "P7", "reason": "missing predicted value", "line": 14}
    ]


def test_cli_constant_values_strict_json(tmp_path: Path) -> None:
    table_csv = tmp_path / "table.csv"
    table_csv.write_text("patient,section,predicted,reported\nA,1,5,1\nB,1,5,2\nC,1,5,3\n")

    completed = run_cli(table_csv)

    assert completed.returncode == 0, completed.stderr
    output = json.loads(completed.stdout, parse_constant=reject_constant)
    assert output["pearson_r"] is None
    assert "constant predicted values: r undefined" in output["notes"][0]


@pytest.mark.parametrize(
    ("content", "messages"),
    [
        ("patient,predicted\nA,5\n", ["is missing the columns section, reported"]),
        ("patient;section;predicted;reported\nA;1;5;5\n", ["is missing the columns", "';'"]),
        ("patient,section,predicted,reported\nA,1,5,5\nB,1,abc,5\n",
         ["line 3, column predicted", "'abc' is not a number"]),
        ("patient,section,predicted,reported\nA,1,12%,5\n", ["line 2", "'12%'"]),
        ("patient,section,predicted,reported\nA,1,5,5\nB,1,5,150\n",
         ["line 3, column reported", "outside 0-100"]),
        ("patient,section,predicted,reported\n,1,5,5\n", ["line 2", "patient cell is empty"]),
        ("", ["is missing the columns patient, section, predicted, reported"]),
    ],
    ids=["missing-columns", "semicolons", "not-a-number", "percent-sign", "out-of-range",
         "empty-patient", "empty-file"],
)
def test_cli_bad_file(tmp_path: Path, content: str, messages: list[str]) -> None:
    table_csv = tmp_path / "bad.csv"
    table_csv.write_text(content, encoding="utf-8")

    completed = run_cli(table_csv)

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    for message in messages:
        assert message in completed.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    completed = run_cli(tmp_path / "absent.csv")

    assert completed.returncode == 2
    assert "absent.csv" in completed.stderr
    assert "No such file" in completed.stderr


@pytest.mark.parametrize(("n", "expected_p"), [(3, 2 / 6), (4, 2 / 24), (5, 2 / 120)])
def test_spearman_p_of_a_perfect_order_is_exact(n, expected_p) -> None:
    table = [(f"P{i}", "1", float(i), float(10 * i + 5)) for i in range(n)]

    result = agreement(table)

    assert result.spearman_rho == pytest.approx(1.0)
    assert result.spearman_p == pytest.approx(expected_p, rel=1e-12)


def test_spearman_p_counts_orderings_with_ties() -> None:
    predicted = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0]
    reported = [2.0, 2.0, 5.0, 1.0, 8.0, 6.0, 3.0]
    table = [(f"P{i}", "1", p, r) for i, (p, r) in enumerate(zip(predicted, reported))]

    result = agreement(table)

    observed = abs(spearmanr(predicted, reported).statistic)
    as_extreme = sum(
        abs(spearmanr(predicted, list(order)).statistic) >= observed - 1e-12
        for order in itertools.permutations(reported)
    )
    assert result.spearman_p == pytest.approx(as_extreme / math.factorial(7), rel=1e-12)
