"""Agreement between predicted and reported IFTA % per patient.

Each patient's predicted IFTA is the mean over their sections, and the reported IFTA is the
pathology report's value. The patient means are compared with Pearson r and its 95 %
confidence interval, Spearman rho, and Bland-Altman bias and limits of agreement.

Command line, for a CSV with the columns patient, section, predicted and reported::

    python -m ml.agreement TABLE.csv

prints the result as JSON. Empty cells and NA / NaN count as missing values, and such
rows are skipped and listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import itertools
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ml.errors import NephrowebError

logger = logging.getLogger(__name__)

# Two-sided 95 % quantile of the standard normal distribution, for the Fisher z interval.
Z_975 = float(stats.norm.ppf(0.975))
# Bland-Altman limits of agreement conventionally use the rounded 1.96.
BLAND_ALTMAN_Z = 1.96
# Fisher z needs n > 3 for its standard error 1 / sqrt(n - 3).
MIN_PATIENTS_FOR_CI = 4
# Up to this many patients the p-value of Spearman's rho is exact, from all n!
# orderings; SciPy's t approximation gives p = 0 for a perfect rank order at any n.
EXACT_SPEARMAN_MAX_N = 8
# With 2 patients r is always +1 or -1, so a correlation needs at least 3.
MIN_PATIENTS_FOR_CORRELATION = 3
# Reports that differ by less than this (in percentage points) count as the same value.
REPORT_TOLERANCE_PCT = 1e-9
MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "none", "null"})
CSV_COLUMNS = ("patient", "section", "predicted", "reported")


class AgreementError(NephrowebError, ValueError):
    """A table of predicted and reported IFTA values that cannot be analysed."""


@dataclass(frozen=True)
class SkippedRow:
    """A table row left out of the analysis.

    Attributes:
        row_index: 0-based position of the row in the table passed to :func:`agreement`.
        patient: The row's patient id.
        reason: Why the row was skipped.
    """

    row_index: int
    patient: str
    reason: str


@dataclass(frozen=True)
class PatientMeans:
    """One patient's values, averaged over sections.

    Attributes:
        patient: Patient id.
        n_sections: Rows used for this patient.
        predicted_pct: Mean predicted IFTA % over the sections.
        reported_pct: Reported IFTA %, the mean when sections report different values.
    """

    patient: str
    n_sections: int
    predicted_pct: float
    reported_pct: float


@dataclass(frozen=True)
class AgreementResult:
    """Agreement statistics over patients. A statistic that is undefined is None.

    Attributes:
        n_patients: Patients with at least one usable section.
        pearson_r: Pearson correlation of the patient means.
        pearson_ci95: Two-sided 95 % confidence interval of r by Fisher z, as (low, high).
        pearson_p: Two-sided p-value of r (``scipy.stats.pearsonr``).
        spearman_rho: Spearman rank correlation of the patient means.
        spearman_p: Two-sided p-value of rho: exact (all orderings) up to
            ``EXACT_SPEARMAN_MAX_N`` patients, else ``scipy.stats.spearmanr``'s.
        bland_altman_bias_pct: Mean of predicted - reported, in percentage points.
        bland_altman_sd_pct: Sample standard deviation (ddof=1) of the differences.
        bland_altman_loa95_pct: Limits of agreement, bias -/+ 1.96 SD, as (low, high).
        patients: Per-patient means, sorted by patient id.
        skipped_rows: Rows left out, with their reasons.
        n_rows_used: Rows that entered the patient means.
        notes: Why a statistic is None.
        warnings: Data problems that did not stop the analysis, such as a patient whose
            sections report different values.
    """

    n_patients: int
    pearson_r: float | None
    pearson_ci95: tuple[float, float] | None
    pearson_p: float | None
    spearman_rho: float | None
    spearman_p: float | None
    bland_altman_bias_pct: float | None
    bland_altman_sd_pct: float | None
    bland_altman_loa95_pct: tuple[float, float] | None
    patients: tuple[PatientMeans, ...]
    skipped_rows: tuple[SkippedRow, ...]
    n_rows_used: int
    notes: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        """Return the result as nested dicts, tuples and numbers for ``json.dumps``."""
        return asdict(self)


def agreement(table: Iterable[Sequence[object]]) -> AgreementResult:
    """Compare predicted with reported IFTA % per patient.

    Args:
        table: Rows of (patient, section, predicted_pct, reported_pct), percentages on a
            0-100 scale. A row whose predicted or reported value is None or NaN is
            skipped and listed in ``skipped_rows``.

    Returns:
        The statistics, the patient means and the reasons for any missing statistic.

    Raises:
        AgreementError: A row does not have 4 items, has an empty patient id, or has a
            value that is not a number from 0 to 100 (and not missing).
    """
    rows_by_patient: dict[str, list[tuple[str, float, float]]] = {}
    skipped: list[SkippedRow] = []
    n_rows_used = 0
    for row_index, row in enumerate(table):
        patient, section, predicted_pct, reported_pct = _unpack_row(row_index, row)
        reason = _missing_reason(predicted_pct, reported_pct)
        if reason is not None:
            skipped.append(SkippedRow(row_index, patient, reason))
            continue
        rows_by_patient.setdefault(patient, []).append((section, predicted_pct, reported_pct))
        n_rows_used += 1
    if skipped:
        logger.info("Agreement: skipped %d rows with missing values.", len(skipped))

    patients, warnings = _patient_means(rows_by_patient)
    predicted = np.array([patient.predicted_pct for patient in patients])
    reported = np.array([patient.reported_pct for patient in patients])
    notes: list[str] = []
    pearson_r, pearson_ci95, pearson_p, spearman_rho, spearman_p = _correlations(
        predicted, reported, notes
    )
    bias_pct, sd_pct, loa95_pct = _bland_altman(predicted - reported, notes)
    return AgreementResult(
        n_patients=len(patients),
        pearson_r=pearson_r,
        pearson_ci95=pearson_ci95,
        pearson_p=pearson_p,
        spearman_rho=spearman_rho,
        spearman_p=spearman_p,
        bland_altman_bias_pct=bias_pct,
        bland_altman_sd_pct=sd_pct,
        bland_altman_loa95_pct=loa95_pct,
        patients=tuple(patients),
        skipped_rows=tuple(skipped),
        n_rows_used=n_rows_used,
        notes=tuple(notes),
        warnings=tuple(warnings),
    )


def pearson_ci95(r: float, n: int) -> tuple[float, float]:
    """Return the two-sided 95 % confidence interval of a Pearson r by Fisher z.

    ``z = atanh(r)``, ``SE = 1 / sqrt(n - 3)``, and the bounds are
    ``tanh(z -/+ 1.95996 * SE)``. A perfect correlation (|r| = 1) gives (r, r).

    Raises:
        AgreementError: ``n`` is below 4 or ``r`` is outside [-1, 1].
    """
    if n < MIN_PATIENTS_FOR_CI:
        raise AgreementError(
            f"A Fisher z interval needs n >= {MIN_PATIENTS_FOR_CI} pairs, got n = {n}."
        )
    if not -1.0 <= r <= 1.0:
        raise AgreementError(f"A Pearson r must be from -1 to 1, got {r!r}.")
    if abs(r) == 1.0:
        return (r, r)
    z = math.atanh(r)
    half_width = Z_975 / math.sqrt(n - 3)
    return (math.tanh(z - half_width), math.tanh(z + half_width))


def _unpack_row(row_index: int, row: Sequence[object]) -> tuple[str, str, float, float]:
    if isinstance(row, (str, bytes)) or len(row) != 4:
        raise AgreementError(
            f"Row {row_index} must be (patient, section, predicted_pct, reported_pct), got "
            f"{row!r}."
        )
    patient, section, predicted, reported = row
    patient_id = "" if patient is None else str(patient).strip()
    if not patient_id:
        raise AgreementError(f"Row {row_index} has an empty patient id. Fill in the patient.")
    values = []
    for name, value in (("predicted_pct", predicted), ("reported_pct", reported)):
        values.append(_percentage(row_index, name, value))
    return patient_id, str(section), values[0], values[1]


def _percentage(row_index: int, name: str, value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AgreementError(
            f"Row {row_index}: {name} must be a number, got {value!r}. Pass a percentage "
            f"from 0 to 100, or None for a missing value."
        )
    number = float(value)
    if math.isnan(number):
        return number
    if not 0.0 <= number <= 100.0:
        raise AgreementError(
            f"Row {row_index}: {name} = {number!r} is outside 0-100. Pass a percentage, "
            f"not a fraction (for example 12.5, not 0.125)."
        )
    return number


def _missing_reason(predicted_pct: float, reported_pct: float) -> str | None:
    missing = [
        name for name, value in (("predicted", predicted_pct), ("reported", reported_pct))
        if math.isnan(value)
    ]
    if not missing:
        return None
    return f"missing {' and '.join(missing)} value"


def _patient_means(
    rows_by_patient: dict[str, list[tuple[str, float, float]]],
) -> tuple[list[PatientMeans], list[str]]:
    patients = []
    warnings = []
    for patient in sorted(rows_by_patient):
        rows = rows_by_patient[patient]
        sections = [section for section, _, _ in rows]
        duplicates = sorted({section for section in sections if sections.count(section) > 1})
        if duplicates:
            warnings.append(
                f"patient {patient}: sections {', '.join(duplicates)} appear more than once; "
                f"every row is used in the mean"
            )
        reported_values = [reported for _, _, reported in rows]
        if max(reported_values) - min(reported_values) > REPORT_TOLERANCE_PCT:
            warnings.append(
                f"patient {patient}: sections report different IFTA values "
                f"({', '.join(f'{value:g}' for value in reported_values)}); their mean is used"
            )
        patients.append(PatientMeans(
            patient=patient,
            n_sections=len(rows),
            predicted_pct=float(np.mean([predicted for _, predicted, _ in rows])),
            reported_pct=float(np.mean(reported_values)),
        ))
    return patients, warnings


def _correlations(
    predicted: np.ndarray, reported: np.ndarray, notes: list[str]
) -> tuple[float | None, tuple[float, float] | None, float | None, float | None, float | None]:
    n = predicted.size
    if n < MIN_PATIENTS_FOR_CORRELATION:
        notes.append(
            f"{n} patient{'s' if n != 1 else ''}: correlations need at least "
            f"{MIN_PATIENTS_FOR_CORRELATION} patients, so r, rho and their p-values are "
            "undefined"
        )
        return None, None, None, None, None

    constant_sides = [
        name for name, values in (("predicted", predicted), ("reported", reported))
        if np.ptp(values) == 0
    ]
    if constant_sides:
        for name in constant_sides:
            notes.append(f"constant {name} values: r undefined, and rho undefined too")
        return None, None, None, None, None

    pearson = stats.pearsonr(predicted, reported)
    spearman = stats.spearmanr(predicted, reported)
    rho = float(spearman.statistic)
    rho_p = float(spearman.pvalue)
    if n <= EXACT_SPEARMAN_MAX_N:
        rho_p = exact_spearman_p(predicted, reported)
    r = float(pearson.statistic)
    if n < MIN_PATIENTS_FOR_CI:
        ci95 = None
        notes.append(
            f"{n} patients: the Fisher z confidence interval of r needs at least "
            f"{MIN_PATIENTS_FOR_CI}"
        )
    else:
        ci95 = pearson_ci95(r, n)
    return r, ci95, float(pearson.pvalue), rho, rho_p


def exact_spearman_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho over all orderings of ``y`` against ``x``.

    The share of the n! orderings whose |rho| reaches the observed |rho|, ties kept as
    average ranks. For rho = 1 that is 2 / n!. Cost grows as n!, so use it for small n.
    """
    rank_x = stats.rankdata(x)
    rank_y = stats.rankdata(y)
    orderings = np.array(list(itertools.permutations(rank_y)))
    centred_x = rank_x - rank_x.mean()
    centred = orderings - orderings.mean(axis=1, keepdims=True)
    rhos = centred @ centred_x / (
        np.linalg.norm(centred, axis=1) * np.linalg.norm(centred_x)
    )
    observed = abs(float(np.corrcoef(rank_x, rank_y)[0, 1]))
    return float(np.mean(np.abs(rhos) >= observed - 1e-12))


def _bland_altman(
    differences_pct: np.ndarray, notes: list[str]
) -> tuple[float | None, float | None, tuple[float, float] | None]:
    n = differences_pct.size
    if n == 0:
        notes.append("no patients with both values: Bland-Altman bias is undefined")
        return None, None, None
    bias_pct = float(np.mean(differences_pct))
    if n < 2:
        notes.append("1 patient: the standard deviation and limits of agreement need at least 2")
        return bias_pct, None, None
    sd_pct = float(np.std(differences_pct, ddof=1))
    loa95_pct = (bias_pct - BLAND_ALTMAN_Z * sd_pct, bias_pct + BLAND_ALTMAN_Z * sd_pct)
    return bias_pct, sd_pct, loa95_pct


@dataclass(frozen=True)
class CsvTable:
    """Rows read from a CSV file, ready for :func:`agreement`.

    Attributes:
        rows: (patient, section, predicted_pct, reported_pct), NaN for a missing value.
        line_numbers: The file line of each row (the header is line 1).
    """

    rows: tuple[tuple[str, str, float, float], ...]
    line_numbers: tuple[int, ...]


def read_table_csv(path: Path) -> CsvTable:
    """Read a CSV with the columns patient, section, predicted and reported.

    Missing cells (empty, NA, N/A, NaN, None, null in any case) become NaN, so that
    :func:`agreement` skips their rows. Other columns are ignored.

    Raises:
        AgreementError: The file cannot be read, a column is missing, or a cell is not a
            number from 0 to 100. The message names the line of the file.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            return _read_rows(path, csv.DictReader(file))
    except OSError as exc:
        raise AgreementError(f"Cannot read {path}: {exc.strerror}. Check the path.") from exc
    except UnicodeDecodeError as exc:
        raise AgreementError(f"{path} is not UTF-8 text. Save it as a UTF-8 CSV.") from exc
    except csv.Error as exc:
        raise AgreementError(f"{path} is not a valid CSV file: {exc}.") from exc


def _read_rows(path: Path, reader: csv.DictReader) -> CsvTable:
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        hint = ""
        if len(header) == 1 and ";" in header[0]:
            hint = " The header contains ';', so save the file with commas as separators."
        raise AgreementError(
            f"{path} is missing the columns {', '.join(missing)}. Found: {header or 'no header'}. "
            f"The first line must name the columns {', '.join(CSV_COLUMNS)}.{hint}"
        )

    rows = []
    line_numbers = []
    for record in reader:
        line = reader.line_num
        patient = (record["patient"] or "").strip()
        section = (record["section"] or "").strip()
        for column, value in (("patient", patient), ("section", section)):
            if not value:
                raise AgreementError(
                    f"{path} line {line}: the {column} cell is empty. Fill it in or delete "
                    f"the line."
                )
        predicted = _cell_percentage(path, line, "predicted", record["predicted"])
        reported = _cell_percentage(path, line, "reported", record["reported"])
        rows.append((patient, section, predicted, reported))
        line_numbers.append(line)
    return CsvTable(tuple(rows), tuple(line_numbers))


def _cell_percentage(path: Path, line: int, column: str, cell: str | None) -> float:
    text = (cell or "").strip()
    if text.lower() in MISSING_CELLS:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise AgreementError(
            f"{path} line {line}, column {column}: {text!r} is not a number. Write a "
            f"percentage such as 12.5 (no % sign, '.' as decimal point), or leave the cell "
            f"empty for a missing value."
        ) from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise AgreementError(
            f"{path} line {line}, column {column}: {text} is outside 0-100. Write a "
            f"percentage, not a fraction (12.5, not 0.125)."
        )
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: read a CSV, print the agreement as JSON, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m ml.agreement",
        description="Agreement of predicted and reported IFTA %% per patient, as JSON.",
    )
    parser.add_argument(
        "table", type=Path,
        help="CSV with the columns patient, section, predicted and reported (IFTA %%, 0-100).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        table = read_table_csv(args.table)
        result = agreement(table.rows)
    except AgreementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    output = result.to_dict()
    # Skipped rows name their line in the file, which a user can find, beside the index.
    for skipped_row in output["skipped_rows"]:
        skipped_row["line"] = table.line_numbers[skipped_row["row_index"]]
    print(json.dumps(output, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
