"""PNG figures of report agreement: predicted vs reported scatter, and Bland-Altman.

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot,
so no global figure state is shared between requests. Each figure has a fixed size in
pixels (``SCATTER_SIZE_PX``, ``BLAND_ALTMAN_SIZE_PX``).
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.agreement import MIN_PATIENTS_FOR_CI, MIN_PATIENTS_FOR_CORRELATION, AgreementResult

DPI = 100
SCATTER_SIZE_PX = (640, 640)
BLAND_ALTMAN_SIZE_PX = (800, 560)
POINT_COLOR = "#3559c7"
LINE_COLOR = "#5b6575"


def scatter_png(result: AgreementResult, subtitle: str) -> bytes:
    """Draw predicted vs reported IFTA %, one point per patient, with the identity line.

    Both axes span 0-100 %. The title gives n, Pearson r with its 95 % CI, or the reason
    a value is missing.
    """
    figure, axes = _figure(SCATTER_SIZE_PX)
    reported = [patient.reported_pct for patient in result.patients]
    predicted = [patient.predicted_pct for patient in result.patients]
    axes.plot([0, 100], [0, 100], linestyle="--", color=LINE_COLOR, linewidth=1,
              label="identity (predicted = reported)")
    axes.scatter(reported, predicted, color=POINT_COLOR, s=36, zorder=3, label="patient")
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.set_aspect("equal")
    axes.set_xlabel("Reported IFTA (%)")
    axes.set_ylabel("Predicted IFTA (%, mean over sections)")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.legend(loc="upper left", fontsize=9)
    axes.set_title(f"{subtitle}\n{correlation_caption(result)}", fontsize=10)
    return _png_bytes(figure)


def bland_altman_png(result: AgreementResult, subtitle: str) -> bytes:
    """Draw the Bland-Altman plot: mean of the two values vs predicted minus reported.

    Lines mark the bias and the limits of agreement (bias -/+ 1.96 SD), each labelled
    with its value. Without enough patients the missing lines are named in the title.
    """
    figure, axes = _figure(BLAND_ALTMAN_SIZE_PX)
    means = [(p.predicted_pct + p.reported_pct) / 2 for p in result.patients]
    differences = [p.predicted_pct - p.reported_pct for p in result.patients]
    axes.scatter(means, differences, color=POINT_COLOR, s=36, zorder=3)
    axes.axhline(0, color=LINE_COLOR, linewidth=0.6)
    axes.set_xlim(0, 100)

    lines = []
    if result.bland_altman_bias_pct is not None:
        lines.append((result.bland_altman_bias_pct, "bias", "-"))
    if result.bland_altman_loa95_pct is not None:
        low, high = result.bland_altman_loa95_pct
        lines.append((low, "bias - 1.96 SD", "--"))
        lines.append((high, "bias + 1.96 SD", "--"))
    for value, name, style in lines:
        axes.axhline(value, color="#b3261e", linestyle=style, linewidth=1)
        axes.annotate(
            f"{name}: {value:+.2f}", xy=(1.0, value), xycoords=("axes fraction", "data"),
            xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom", fontsize=9,
        )
    extent = max([abs(d) for d in differences] + [abs(v) for v, _, _ in lines] + [5.0])
    axes.set_ylim(-extent * 1.2, extent * 1.2)
    axes.set_xlabel("Mean of predicted and reported IFTA (%)")
    axes.set_ylabel("Predicted - reported IFTA (percentage points)")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    axes.set_title(f"{subtitle}\n{bland_altman_caption(result)}", fontsize=10)
    return _png_bytes(figure)


def correlation_caption(result: AgreementResult) -> str:
    """Describe n and Pearson r with its 95 % CI in one line, or why they are missing."""
    parts = [f"n = {result.n_patients} patients"]
    if result.pearson_r is None:
        parts.append(f"r undefined: {undefined_r_reason(result)}")
    else:
        parts.append(f"Pearson r = {result.pearson_r:.3f}")
        if result.pearson_ci95 is None:
            parts.append(f"no 95 % CI: fewer than {MIN_PATIENTS_FOR_CI} patients")
        else:
            low, high = result.pearson_ci95
            parts.append(f"95 % CI {low:.3f} to {high:.3f}")
    return ", ".join(parts)


def undefined_r_reason(result: AgreementResult) -> str:
    """Say in a few words why Pearson r is undefined for ``result``."""
    if result.n_patients < MIN_PATIENTS_FOR_CORRELATION:
        return f"fewer than {MIN_PATIENTS_FOR_CORRELATION} patients"
    constant_sides = [
        side for side in ("predicted", "reported")
        if any(note.startswith(f"constant {side}") for note in result.notes)
    ]
    if constant_sides:
        return f"all {' and all '.join(constant_sides)} values are equal (no variance)"
    return "; ".join(result.notes)


def bland_altman_caption(result: AgreementResult) -> str:
    """Describe n, bias and limits of agreement in one line, or why they are missing."""
    parts = [f"n = {result.n_patients} patients"]
    if result.bland_altman_bias_pct is None:
        parts.append("no bias (no patients with both values)")
        return ", ".join(parts)
    parts.append(f"bias {result.bland_altman_bias_pct:+.2f}")
    if result.bland_altman_loa95_pct is None:
        parts.append("no limits of agreement (they need 2 patients)")
    else:
        low, high = result.bland_altman_loa95_pct
        parts.append(f"limits {low:+.2f} to {high:+.2f}")
    return ", ".join(parts)


def _figure(size_px: tuple[int, int]) -> tuple[Figure, object]:
    figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
