"""REST endpoints for slides: list, upload, detail, tissue mask, deep-zoom tiles."""

from django.conf import settings
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import audit
from apps.accounts.permissions import has_perm
from ml.errors import SlideError

from . import services, tiles
from .models import Slide
from .serializers import (
    SlideSerializer,
    SlideUploadSerializer,
    TileMetadataSerializer,
    TissueSerializer,
)

# Tiles never change for a given slide record (files are never overwritten in place).
TILE_CACHE_CONTROL = "private, max-age=86400, immutable"


class SlideListView(APIView):
    parser_classes = [MultiPartParser]

    def get_permissions(self):
        if self.request.method == "POST":
            return [has_perm("slides.add_slide")()]
        return [has_perm("slides.view_slide")()]

    @extend_schema(responses=SlideSerializer(many=True))
    def get(self, request):
        return Response(SlideSerializer(Slide.objects.all(), many=True).data)

    @extend_schema(request=SlideUploadSerializer, responses={201: SlideSerializer})
    def post(self, request):
        limit_bytes = settings.NEPHROWEB_MAX_UPLOAD_MB * 1024 * 1024
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > limit_bytes:
            raise SlideError(
                f"The upload of {declared / 2**20:.0f} MB exceeds the limit of "
                f"{settings.NEPHROWEB_MAX_UPLOAD_MB} MB (NEPHROWEB_MAX_UPLOAD_MB)."
            )
        form = SlideUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        uploaded = data.pop("file")
        slide = services.store_upload(uploaded, user=request.user, **data)
        return Response(SlideSerializer(slide).data, status=status.HTTP_201_CREATED)


class SlideDetailView(APIView):
    def get_permissions(self):
        if self.request.method == "DELETE":
            return [has_perm("slides.view_slide", "slides.delete_slide")()]
        return [has_perm("slides.view_slide")()]

    @extend_schema(responses=SlideSerializer)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        audit.record(
            audit.Action.VIEW, user=request.user, target_type=audit.Target.SLIDE,
            target_id=slide.pk, slide_id=slide.pk, detail={"via": "api"},
        )
        return Response(SlideSerializer(slide).data)

    @extend_schema(responses={204: None})
    def delete(self, request, slide_id):
        services.delete_slide(get_object_or_404(Slide, pk=slide_id), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TissueView(APIView):
    permission_classes = [has_perm("slides.view_slide")]

    @extend_schema(responses=TissueSerializer)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        return Response({"type": "Feature", "geometry": slide.tissue_geojson or None,
                         "properties": {"area_um2": slide.tissue_area_um2}})


class TileMetadataView(APIView):
    permission_classes = [has_perm("slides.view_slide")]

    @extend_schema(responses=TileMetadataSerializer)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        return Response(tiles.tile_metadata(slide.file_path))


def _slide_for_image(request, slide_id) -> Slide:
    if not request.user.is_authenticated or not request.user.has_perm("slides.view_slide"):
        raise Http404  # the same response as for a missing slide, so tiles reveal nothing
    return get_object_or_404(Slide.objects.only("file_path"), pk=slide_id)


@require_GET
def tile_view(request, slide_id, z, x, y):
    """Serve one deep-zoom JPEG tile (a plain Django view: this is the hottest path)."""
    slide = _slide_for_image(request, slide_id)
    try:
        data = tiles.read_tile(slide.file_path, z, x, y)
    except tiles.SlideFileMissing as exc:
        raise Http404(str(exc)) from None
    if data is None:
        raise Http404("No such tile.")
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = TILE_CACHE_CONTROL
    return response


@require_GET
def thumbnail_view(request, slide_id):
    slide = _slide_for_image(request, slide_id)
    try:
        thumbnail = tiles.read_thumbnail(slide.file_path)
    except tiles.SlideFileMissing as exc:
        raise Http404(str(exc)) from None
    response = HttpResponse(thumbnail, content_type="image/jpeg")
    response["Cache-Control"] = TILE_CACHE_CONTROL
    return response
