"""API endpoints that download read-outs as CSV, per slide and per cohort."""

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.text import slugify
from rest_framework.views import APIView

from apps.accounts.permissions import has_perm
from apps.slides.models import Slide

from .readout_exports import readouts_csv

EXPORT_PERMISSIONS = ("slides.view_slide", "annotations.export_instances")


def _csv_response(text: str, file_name: str) -> HttpResponse:
    # A byte order mark makes spreadsheet programs read the file as UTF-8.
    response = HttpResponse("\ufeff" + text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{file_name}"'
    return response


class SlideReadoutsCSVView(APIView):
    permission_classes = [has_perm(*EXPORT_PERMISSIONS)]

    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        return _csv_response(readouts_csv([slide]), f"slide-{slide.pk}-readouts.csv")


class CohortReadoutsCSVView(APIView):
    """GET ``?cohort=NAME``: the slides of one cohort; without the parameter, every slide."""

    permission_classes = [has_perm(*EXPORT_PERMISSIONS)]

    def get(self, request):
        slides = Slide.objects.order_by("cohort", "patient_id", "section", "id")
        cohort = request.query_params.get("cohort")
        if cohort is not None:
            slides = slides.filter(cohort=cohort.strip())
            file_name = f"readouts-{slugify(cohort) or 'no-cohort'}.csv"
        else:
            file_name = "readouts-all-cohorts.csv"
        return _csv_response(readouts_csv(slides), file_name)
