"""REST endpoints of clinical read-outs: the numbers per source and the IFTA regions."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView
from shapely.geometry import mapping, shape

from apps.accounts.permissions import has_perm
from apps.slides.models import Slide
from apps.training.models import ModelVersion
from ml import clinical

from . import readouts
from .models import SlideReadout

VIEW_READOUTS = has_perm("analysis.view_slidereadout")


class ReadoutQuerySerializer(serializers.Serializer):
    """Query parameters that choose one read-out of a slide."""

    source = serializers.ChoiceField(choices=SlideReadout.Source.choices, default="reviewed")
    model_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True, default=None
    )


class SlideReadoutSerializer(serializers.ModelSerializer):
    """One read-out without its IFTA geometry."""

    label = serializers.SerializerMethodField()
    model_version_name = serializers.CharField(
        source="model_version.name", default=None, read_only=True, allow_null=True
    )
    glomerulosclerosis_reason = serializers.SerializerMethodField()
    banff_note = serializers.SerializerMethodField()

    class Meta:
        model = SlideReadout
        fields = [
            "source", "label", "model_version", "model_version_name", "proposal_run",
            "counts", "densities_per_mm2", "cortex_source", "cortex_area_um2",
            "ifta_pct", "ifta_area_um2", "ifta_clusters", "settings",
            "glomeruli_count", "sclerotic_count", "glomerulosclerosis_pct",
            "glomerulosclerosis_reason", "banff_ci", "banff_ct", "banff_note", "message",
            "computed_at",
        ]

    def get_label(self, readout) -> str:
        return readouts.readout_label(readout.source, readout.model_version)

    def get_glomerulosclerosis_reason(self, readout) -> str:
        if readout.glomerulosclerosis_pct is not None:
            return ""
        return clinical.glomerulosclerosis(0, 0).reason

    def get_banff_note(self, readout) -> str:
        return clinical.BANFF_PROXY_NOTE if readout.banff_ci is not None else ""


class IftaRegionPropertiesSerializer(serializers.Serializer):
    area_um2 = serializers.FloatField()


class IftaRegionSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="Always 'Feature'.")
    geometry = serializers.JSONField(help_text="GeoJSON Polygon in level-0 pixels.")
    properties = IftaRegionPropertiesSerializer()


class IftaRegionsSerializer(serializers.Serializer):
    """Shape of ``ifta_feature_collection``'s result, for the OpenAPI schema."""

    type = serializers.CharField(help_text="Always 'FeatureCollection'.")
    features = IftaRegionSerializer(many=True)
    source = serializers.CharField()
    label = serializers.CharField()
    ifta_pct = serializers.FloatField(allow_null=True)


class SlideReadoutListView(APIView):
    """GET every current read-out of a slide, recomputing the stale ones first."""

    permission_classes = [VIEW_READOUTS]

    @extend_schema(responses=SlideReadoutSerializer(many=True))
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        rows = readouts.slide_readouts(slide)
        return Response(SlideReadoutSerializer(rows, many=True).data)


class IftaRegionsView(APIView):
    """GET the IFTA regions of one read-out as a GeoJSON FeatureCollection in level-0 px."""

    permission_classes = [VIEW_READOUTS]

    @extend_schema(parameters=[ReadoutQuerySerializer], responses=IftaRegionsSerializer)
    def get(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        query = ReadoutQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        readout = readouts.current_readout(
            slide, query.validated_data["source"], query.validated_data["model_version"]
        )
        return Response(ifta_feature_collection(readout, slide.mpp))


def ifta_feature_collection(readout: SlideReadout, mpp: float) -> dict:
    """Return one Feature per IFTA region polygon, with its area in µm²."""
    features = []
    if readout.ifta_regions:
        for polygon in shape(readout.ifta_regions).geoms:
            features.append({
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {"area_um2": polygon.area * mpp * mpp},
            })
    return {
        "type": "FeatureCollection",
        "features": features,
        "source": readout.source,
        "label": readouts.readout_label(readout.source, readout.model_version),
        "ifta_pct": readout.ifta_pct,
    }
