"""The model comparison page: evaluations of chosen model versions side by side."""

from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.permissions import page_permission_required
from apps.training.models import ModelVersion
from ml.errors import NephrowebError

from . import evaluations
from .models import ModelEvaluation

ACTIVE_STATES = (ModelEvaluation.Status.QUEUED, ModelEvaluation.Status.RUNNING)


@login_required
@page_permission_required("analysis.view_modelevaluation")
def model_comparison(request):
    versions = list(
        ModelVersion.objects.filter(status=ModelVersion.Status.SUCCEEDED).order_by("id")
    )
    latest = _latest_evaluations(versions)
    chosen_ids = _chosen_ids(request, versions, latest)
    columns = [_column(version, latest) for version in versions if version.pk in chosen_ids]
    return render(request, "analysis/model_comparison.html", {
        "versions": [
            {
                "version": version,
                "chosen": version.pk in chosen_ids,
                "latest": latest.get(version.pk),
            }
            for version in versions
        ],
        "columns": columns,
        "rows": _class_rows(columns),
        "mean_row": _mean_row(columns),
        "can_evaluate": request.user.has_perm("analysis.evaluate_models"),
        "chosen_ids": sorted(chosen_ids),
    })


@login_required
@page_permission_required("analysis.evaluate_models")
@require_POST
def evaluate_model(request, version_id):
    """Queue an evaluation of one version and go back to the page, which shows its state."""
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        evaluations.start_evaluation(version, user=request.user)
        messages.info(request, f"Evaluation of {version.name} queued.")
    except NephrowebError as error:
        messages.error(request, str(error))
    chosen_values = [value for value in request.POST.getlist("versions") if value.isdigit()]
    query = urlencode([("versions", value) for value in chosen_values or [str(version.pk)]])
    return redirect(f"{reverse('model-comparison')}?{query}")


def _latest_evaluations(versions) -> dict[int, dict]:
    """Per version id: its newest evaluation and its newest succeeded one."""
    latest: dict[int, dict] = {}
    rows = ModelEvaluation.objects.filter(model_version__in=versions).order_by("-created_at", "-id")
    for evaluation in rows:
        entry = latest.setdefault(
            evaluation.model_version_id, {"newest": evaluation, "succeeded": None}
        )
        if entry["succeeded"] is None and evaluation.status == ModelEvaluation.Status.SUCCEEDED:
            entry["succeeded"] = evaluation
    return latest


def _chosen_ids(request, versions, latest) -> set[int]:
    """Return the versions ticked in the form, or by default every version with an evaluation."""
    known = {version.pk for version in versions}
    requested = {int(value) for value in request.GET.getlist("versions") if value.isdigit()}
    if "versions" in request.GET:
        return requested & known
    return {version_id for version_id in latest if version_id in known}


def _column(version, latest) -> dict:
    entry = latest.get(version.pk, {"newest": None, "succeeded": None})
    evaluation = entry["succeeded"]
    newest = entry["newest"]
    newest_status = newest.status if newest is not None else None
    column = {
        "version": version,
        "evaluation": evaluation,
        "active": newest if newest_status in ACTIVE_STATES else None,
        "failed": newest if newest_status == ModelEvaluation.Status.FAILED else None,
        "stale": False,
        "leakage_warning": "",
        "classes": {},
        "mean": None,
        "untrained_classes": _untrained_classes(version),
    }
    if evaluation is not None:
        column["stale"] = evaluations.is_stale(evaluation)
        column["leakage_warning"] = evaluations.leakage_warning(evaluation)
        column["classes"] = {row["class_name"]: row for row in evaluation.metrics["classes"]}
        column["mean"] = evaluation.metrics["mean"]
    return column


def _untrained_classes(version) -> list[str]:
    """Return the version's classes (background aside) its snapshot held no example of."""
    counts = version.snapshot.class_counts
    return [
        name for name in version.class_names
        if name != evaluations.BACKGROUND_CLASS and not counts.get(name)
    ]


def _cells(metrics: dict | None, truth_text: str) -> list[str]:
    """Format one version's cells of a row: AP, AP50, AP75, Dice/F1 and the truth count."""
    if metrics is None:
        return ["—"] * 5
    number = evaluations.format_metric
    return [number(metrics["ap"]), number(metrics["ap50"]), number(metrics["ap75"]),
            number(metrics["f1"]), truth_text]


def _class_rows(columns) -> list[dict]:
    names: list[str] = []
    for column in columns:
        names.extend(name for name in column["classes"] if name not in names)
    rows = []
    for name in names:
        cells = []
        for column in columns:
            metrics = column["classes"].get(name)
            cells.extend(_cells(metrics, str(metrics["n_truth"]) if metrics else "—"))
        rows.append({"class_name": name, "cells": cells})
    return rows


def _mean_row(columns) -> list[str]:
    cells = []
    for column in columns:
        mean = column["mean"]
        cells.extend(_cells(mean, f"{mean['n_classes']} classes" if mean else "—"))
    return cells
