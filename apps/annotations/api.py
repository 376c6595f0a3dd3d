"""REST endpoints: proposal runs, instances by viewport, GeoJSON export."""

import json
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import audit
from apps.accounts.permissions import has_perm
from apps.slides.models import Slide
from ml.annotation_files import AnnotationFileError, read_annotation_bytes
from nephroweb.openapi import error_response

from . import csv_export, segmentation, services
from .geojson import export_feature_collection
from .importing import NothingImportedError, import_annotations
from .models import Instance, ProposalRun
from .serializers import (
    AnnotationImportRequestSerializer,
    ImportReportSerializer,
    ProposalRunRequestSerializer,
    ProposalRunSerializer,
    SegmentationModelSerializer,
    ViewportFeatureCollectionSerializer,
    ViewportSerializer,
)

# Responses that are files, not JSON. Their errors are JSON, as everywhere in the API.
CSV_RESPONSE = {(200, "text/csv"): OpenApiTypes.STR}
GEOJSON_RESPONSE = {(200, "application/geo+json"): OpenApiTypes.OBJECT}
from .viewport import viewport_feature_collection


# The permission to start a run, which also allows cancelling one.
START_RUN = has_perm("slides.view_slide", "annotations.add_proposalrun")


class ProposalRunListView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [START_RUN()]
        return [has_perm("slides.view_slide", "annotations.view_proposalrun")()]

    @extend_schema(responses=ProposalRunSerializer(many=True))
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        runs = ProposalRun.objects.filter(slide=slide)[:20]
        return Response(ProposalRunSerializer(runs, many=True).data)

    @extend_schema(request=ProposalRunRequestSerializer, responses={201: ProposalRunSerializer})
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        form = ProposalRunRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        version_id = form.validated_data.get("model_version")
        if version_id is not None:
            version = segmentation.usable_model_versions().filter(pk=version_id).first()
            if version is None:
                raise ValidationError({"model_version": segmentation.unusable_reason(version_id)})
            run = segmentation.start_segmentation_run(
                slide, version, user=request.user, overrides=form.validated_data.get("settings")
            )
        else:
            run = services.start_proposal_run(
                slide,
                user=request.user,
                sam_type=form.validated_data.get("sam_type"),
                overrides=form.validated_data.get("settings"),
            )
        return Response(ProposalRunSerializer(run).data, status=status.HTTP_201_CREATED)


class SegmentationModelListView(APIView):
    """Model versions that can segment a slide: trained, with weights."""

    permission_classes = [has_perm("annotations.view_proposalrun")]

    @extend_schema(responses=SegmentationModelSerializer(many=True))
    def get(self, request):
        versions = segmentation.usable_model_versions()
        return Response([
            {
                "id": version.pk,
                "name": version.name,
                "class_names": version.class_names,
                "mpp": version.mpp,
                "best_epoch": version.best_epoch,
                "finished_at": version.finished_at,
            }
            for version in versions
        ])


class ProposalRunDetailView(APIView):
    permission_classes = [has_perm("annotations.view_proposalrun")]

    @extend_schema(responses=ProposalRunSerializer)
    def get(self, request, run_id):
        return Response(ProposalRunSerializer(get_object_or_404(ProposalRun, pk=run_id)).data)


class ProposalRunCancelView(APIView):
    """Cancel a queued run at once, or ask a running one to stop at its next tile."""

    permission_classes = [START_RUN]

    @extend_schema(
        request=None,
        responses={200: ProposalRunSerializer, 409: error_response("The run has already finished.")},
    )
    def post(self, request, run_id):
        run = services.cancel_run(get_object_or_404(ProposalRun, pk=run_id), user=request.user)
        return Response(ProposalRunSerializer(run).data)


class InstanceViewportView(APIView):
    """Instances overlapping a viewport, as GeoJSON features (level-0 coordinates)."""

    permission_classes = [has_perm("slides.view_slide", "annotations.view_instance")]

    @extend_schema(parameters=[ViewportSerializer], responses=ViewportFeatureCollectionSerializer)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        query = ViewportSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        x_min, y_min, x_max, y_max = query.validated_data["bbox"]
        body = viewport_feature_collection(
            slide, x_min, y_min, x_max, y_max, query.validated_data["limit"]
        )
        return HttpResponse(body, content_type="application/json")


class GeoJSONExportView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.export_instances")]

    @extend_schema(responses=GEOJSON_RESPONSE)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        instances = Instance.objects.filter(slide=slide).exclude(
            review_state=Instance.ReviewState.REJECTED
        )
        response = HttpResponse(
            export_feature_collection(instances.iterator(chunk_size=2000)),
            content_type="application/geo+json",
        )
        file_name = f"slide-{slide.pk}.geojson"
        response["Content-Disposition"] = f'attachment; filename="{file_name}"'
        audit.record_export(request.user, file_name, slide_id=slide.pk)
        return response


def _csv_response(text: str, filename: str) -> HttpResponse:
    # A byte order mark makes spreadsheet programs read the file as UTF-8.
    response = HttpResponse("\ufeff" + text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class SlideCountsCSVView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.export_instances")]

    @extend_schema(responses=CSV_RESPONSE)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        file_name = f"slide-{slide.pk}-counts.csv"
        response = _csv_response(csv_export.counts_csv([slide]), file_name)
        audit.record_export(request.user, file_name, slide_id=slide.pk)
        return response


class CohortCountsCSVView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.export_instances")]

    @extend_schema(responses=CSV_RESPONSE)
    def get(self, request):
        response = _csv_response(
            csv_export.counts_csv(Slide.objects.order_by("id")), "cohort-counts.csv"
        )
        audit.record_export(request.user, "cohort-counts.csv")
        return response


class CohortReviewersCSVView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.export_instances")]

    @extend_schema(responses=CSV_RESPONSE)
    def get(self, request):
        response = _csv_response(
            csv_export.reviewers_csv(Slide.objects.order_by("id")), "cohort-reviewers.csv"
        )
        audit.record_export(request.user, "cohort-reviewers.csv")
        return response


class AnnotationImportView(APIView):
    """POST multipart: ``file`` and optionally ``mapping`` (JSON: file class -> class or "")."""

    parser_classes = [MultiPartParser]
    permission_classes = [has_perm("slides.view_slide", "annotations.import_instances")]

    @extend_schema(
        request=AnnotationImportRequestSerializer, responses={201: ImportReportSerializer}
    )
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        upload = request.FILES.get("file")
        if upload is None:
            raise AnnotationFileError("Choose an annotation file to upload (field 'file').")
        limit_bytes = settings.NEPHROWEB_MAX_ANNOTATION_UPLOAD_MB * 1024 * 1024
        if upload.size > limit_bytes:
            raise AnnotationFileError(
                f"{upload.name}: {upload.size / 2**20:.0f} MB exceeds the annotation upload limit "
                f"of {settings.NEPHROWEB_MAX_ANNOTATION_UPLOAD_MB} MB."
            )
        try:
            mapping = json.loads(request.data.get("mapping") or "{}")
        except json.JSONDecodeError as exc:
            raise AnnotationFileError(f"mapping is not valid JSON: {exc}.") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise AnnotationFileError('mapping must be a JSON object of names, e.g. {"Glom": "glomerulus"}.')
        annotations = read_annotation_bytes(upload.read(), Path(upload.name).name)
        report = import_annotations(slide, annotations, user=request.user, mapping=mapping)
        if report.created == 0:
            raise NothingImportedError(report)
        return Response(report.as_dict(), status=status.HTTP_201_CREATED)
