"""The agreement dashboard: statistics, figures, per-patient table and report entry.

Every view reads the same filter query (``source``, ``cohort``). The page and the PNG
endpoints need ``analysis.view_modelevaluation``, and the report forms also need
``analysis.enter_reports``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from apps.accounts import audit
from apps.accounts.permissions import page_permission_required

from . import figures
from .report_agreement import (
    FilterError,
    parse_cohort,
    ReportAgreement,
    cohort_choices,
    parse_source,
    report_agreement,
    source_choices,
)
from .reports import MAX_REPORT_CSV_BYTES, ReportError, import_reports, set_patient_report

logger = logging.getLogger(__name__)

VIEW_PERMISSION = "analysis.view_modelevaluation"
ENTRY_PERMISSION = "analysis.enter_reports"


@login_required
@page_permission_required(VIEW_PERMISSION)
@require_GET
def dashboard(request):
    context = {
        "source_choices": source_choices(),
        "cohort_choices": cohort_choices(),
        "source_value": request.GET.get("source", ""),
        "cohort_value": request.GET.get("cohort", ""),
        "can_enter_reports": request.user.has_perm(ENTRY_PERMISSION),
        "can_export": request.user.has_perm("annotations.export_instances"),
        "max_report_csv_mb": MAX_REPORT_CSV_BYTES // 2**20,
    }
    try:
        summary = _agreement_from_query(request)
    except FilterError as error:
        context["filter_error"] = str(error)
        return render(request, "analysis/dashboard.html", context, status=400)
    query = _filter_query(summary)
    context.update({
        "agreement": summary,
        "result": summary.result,
        "r_reason": figures.undefined_r_reason(summary.result),
        "query": query,
    })
    return render(request, "analysis/dashboard.html", context)


@login_required
@page_permission_required(VIEW_PERMISSION)
@require_GET
def scatter_png(request):
    return _figure_response(request, figures.scatter_png, "agreement-scatter")


@login_required
@page_permission_required(VIEW_PERMISSION)
@require_GET
def bland_altman_png(request):
    return _figure_response(request, figures.bland_altman_png, "bland-altman")


@login_required
@page_permission_required(ENTRY_PERMISSION)
@require_POST
def patient_report_entry(request):
    """Set or clear (empty value) one patient's report IFTA %, then return to the dashboard."""
    patient_id = request.POST.get("patient_id", "")
    try:
        report = set_patient_report(
            request.POST.get("cohort", ""), patient_id, request.POST.get("report_ifta_pct"),
            user=request.user,
        )
    except ReportError as error:
        messages.error(request, f"Report of patient {patient_id!r} not saved: {error}")
    else:
        if report is None:
            messages.success(request, f"Report of patient {patient_id!r} removed.")
        else:
            messages.success(
                request, f"Report of patient {patient_id!r} set to {report.report_ifta_pct:g} %."
            )
    return redirect(_next_url(request))


@login_required
@page_permission_required(ENTRY_PERMISSION)
@require_POST
def report_import(request):
    """Import a report CSV upload (all rows or none), then return to the dashboard."""
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Report import: no file was sent. Choose a CSV file.")
        return redirect(_next_url(request))
    try:
        result = import_reports(upload, user=request.user)
    except ReportError as error:
        messages.error(request, f"Nothing imported. {error}")
    else:
        messages.success(
            request,
            f"Imported {result.file_name}: {result.slide_reports} section reports, "
            f"{result.patient_reports} patient reports.",
        )
    return redirect(_next_url(request))


def _agreement_from_query(request) -> ReportAgreement:
    choice = parse_source(request.GET.get("source"))
    return report_agreement(choice, parse_cohort(request.GET.get("cohort")))


def _filter_query(summary: ReportAgreement) -> str:
    return urlencode({"source": summary.choice.value, "cohort": summary.cohort})


def _figure_response(request, draw, name: str) -> HttpResponse:
    try:
        summary = _agreement_from_query(request)
    except FilterError as error:
        return HttpResponseBadRequest(str(error), content_type="text/plain; charset=utf-8")
    subtitle = f"{summary.choice.label}, {summary.cohort_label}"
    response = HttpResponse(draw(summary.result, subtitle), content_type="image/png")
    # Only the download is an export. The page shows the same image inline on every
    # visit, and logging those requests would add two rows per dashboard view.
    if request.GET.get("download") == "1":
        cohort_slug = slugify(summary.cohort) or "all-cohorts"
        file_name = f"{name}-{summary.choice.slug}-{cohort_slug}.png"
        response["Content-Disposition"] = f'attachment; filename="{file_name}"'
        audit.record_export(
            request.user, file_name, source=summary.choice.value, cohort=summary.cohort
        )
    return response


def _next_url(request) -> str:
    """Return the dashboard URL to go back to; only a dashboard path is accepted."""
    target = request.POST.get("next", "")
    dashboard_path = reverse("dashboard")
    if target.startswith(dashboard_path + "?") or target == dashboard_path:
        return target
    return dashboard_path
