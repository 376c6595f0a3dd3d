"""API endpoints that download read-outs as CSV, per slide and per cohort."""

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.text import slugify
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import audit
from apps.accounts.permissions import has_perm
from apps.slides.models import Slide

from .readout_exports import readouts_csv
from .report_agreement import FilterError, parse_cohort

EXPORT_PERMISSIONS = ("slides.view_slide", "annotations.export_instances")
CSV_RESPONSE = {(200, "text/csv"): OpenApiTypes.STR}


def _csv_response(text: str, file_name: str) -> HttpResponse:
    # A byte order mark makes spreadsheet programs read the file as UTF-8.
    response = HttpResponse("\ufeff" + text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{file_name}"'
    return response


class SlideReadoutsCSVView(APIView):
    permission_classes = [has_perm(*EXPORT_PERMISSIONS)]

    @extend_schema(responses=CSV_RESPONSE)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        file_name = f"slide-{slide.pk}-readouts.csv"
        response = _csv_response(readouts_csv([slide]), file_name)
        audit.record_export(request.user, file_name, slide_id=slide.pk)
        return response


class CohortReadoutsCSVView(APIView):
    """GET ``?cohort=NAME``: the slides of one cohort; blank or absent, every slide.

    The same rule as the dashboard's cohort filter, so its links export what it shows.
    """

    permission_classes = [has_perm(*EXPORT_PERMISSIONS)]

    @extend_schema(
        parameters=[
            OpenApiParameter("cohort", str, description="A cohort name, or blank for all cohorts.")
        ],
        responses=CSV_RESPONSE,
    )
    def get(self, request):
        try:
            cohort = parse_cohort(request.query_params.get("cohort"))
        except FilterError as error:
            return Response({"cohort": [str(error)]}, status=400)
        slides = Slide.objects.order_by("cohort", "patient_id", "section", "id")
        file_name = "readouts-all-cohorts.csv"
        if cohort:
            slides = slides.filter(cohort=cohort)
            file_name = f"readouts-{slugify(cohort)}.csv"
        response = _csv_response(readouts_csv(slides), file_name)
        audit.record_export(request.user, file_name, cohort=cohort)
        return response
