"""Bad pathology report tables (CSV), written at test time into a folder the caller gives.

Each bad table starts from ``GOOD_LINES``: the documented columns patient, section,
cohort and report_ifta_pct, and one row per section of the slides that
``create_report_slides`` makes. One line or the encoding is then damaged. Rows are lines
2 to 4 of the file.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import create_slide_record

REAL_KI_TILE = Path("kidney_tiles") / "omniseg_KI" / "1_1_pt" / "pas" / "im_50_7.png"

GOOD_LINES = (
    "patient,section,cohort,report_ifta_pct",
    "P1,1,C1,12.5",
    "P1,2,C1,30",
    "P2,1,C2,0",
)


def create_report_slides() -> dict:
    """Create the slides the good table names: patient P1 with sections 1 and 2, P2 with 1."""
    return {
        "p1s1": create_slide_record(name="p1s1", cohort="C1", patient_id="P1", section=1),
        "p1s2": create_slide_record(name="p1s2", cohort="C1", patient_id="P1", section=2),
        "p2s1": create_slide_record(name="p2s1", cohort="C2", patient_id="P2", section=1),
    }


def good_table() -> str:
    """Return the good table as CSV text."""
    return "\n".join(GOOD_LINES) + "\n"


def with_line(line_number: int, text: str) -> str:
    """Return the good table with file line ``line_number`` (1 = the header) replaced."""
    return with_lines({line_number: text})


def with_lines(replacements: dict[int, str]) -> str:
    """Return the good table with several file lines replaced (line number -> text)."""
    lines = list(GOOD_LINES)
    for line_number, text in replacements.items():
        lines[line_number - 1] = text
    return "\n".join(lines) + "\n"


def with_extra_line(text: str) -> str:
    """Return the good table with ``text`` appended as line 5."""
    return good_table() + text + "\n"


def write_table(folder: Path, name: str, content: str | bytes) -> Path:
    """Write CSV text (as UTF-8) or raw bytes into ``folder``."""
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def png_named_csv(shared_data: Path, folder: Path) -> Path:
    """Write a real KI tile image (PNG bytes) under a CSV name."""
    return write_table(folder, "reports.csv", (shared_data / REAL_KI_TILE).read_bytes())


def excel_unicode_text(folder: Path) -> Path:
    """Write the good table as UTF-16 with a byte order mark, as Excel saves "Unicode Text"."""
    return write_table(folder, "reports.csv", good_table().replace(",", "\t").encode("utf-16"))


# Damaged tables that are text: name -> CSV content.
TEXT_TABLES = {
    "empty_file": "",
    "header_only": GOOD_LINES[0] + "\n",
    "free_text": "IFTA about 20 percent in P1\n",
    "semicolons": good_table().replace(",", ";"),
    "tabs": good_table().replace(",", "\t"),
    "missing_ifta_column": with_line(1, "patient,section,cohort,ifta"),
    "repeated_column": with_line(1, "patient,section,section,report_ifta_pct"),
    "comma_decimal": with_line(2, "P1,1,C1,12,5"),
    "non_numeric_ifta": with_line(3, "P1,2,C1,twelve"),
    "percent_sign": with_line(3, "P1,2,C1,30%"),
    "nan_ifta": with_line(3, "P1,2,C1,NaN"),
    "infinite_ifta": with_line(3, "P1,2,C1,1e999"),
    "ifta_above_100": with_line(3, "P1,2,C1,112"),
    "negative_ifta": with_line(3, "P1,2,C1,-3"),
    "empty_ifta": with_line(3, "P1,2,C1,"),
    "section_not_whole": with_line(3, "P1,1.5,C1,30"),
    "empty_patient": with_line(4, ",1,C2,0"),
    "patient_too_long": with_line(4, "P" * 65 + ",1,C2,0"),
    "duplicate_rows": with_extra_line("P1,1,C1,12.5"),
    "unknown_patient": with_extra_line("P9,1,C1,10"),
    "unknown_section": with_extra_line("P1,7,C1,10"),
    "nul_byte": with_line(3, "P1\0,2,C1,30"),
    "unclosed_quote": with_line(4, '"P2,1,C2,0'),
    "two_bad_rows": with_lines({2: "P1,1,C1,twelve", 3: "P1,2,C1,130"}),
}
