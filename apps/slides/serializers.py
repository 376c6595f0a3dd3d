from rest_framework import serializers

from .models import Slide
from .services import MAX_SECTION


class SlideSerializer(serializers.ModelSerializer):
    class Meta:
        model = Slide
        fields = [
            "id", "name", "original_filename", "origin", "vendor", "width_px", "height_px",
            "mpp", "mpp_source", "bounds_x_level0", "bounds_y_level0", "bounds_w_level0",
            "bounds_h_level0", "cohort", "patient_id", "section", "report_ifta_pct", "tissue_area_um2",
            "warnings", "created_at",
        ]
        read_only_fields = fields


class SlideUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    name = serializers.CharField(required=False, allow_blank=True, max_length=255)
    mpp = serializers.FloatField(required=False, min_value=0.01, max_value=100.0)
    cohort = serializers.CharField(required=False, allow_blank=True, max_length=64)
    patient_id = serializers.CharField(required=False, allow_blank=True, max_length=64)
    section = serializers.IntegerField(required=False, min_value=0, max_value=MAX_SECTION)
    report_ifta_pct = serializers.FloatField(required=False, min_value=0.0, max_value=100.0)


class TissuePropertiesSerializer(serializers.Serializer):
    area_um2 = serializers.FloatField(allow_null=True)


class TissueSerializer(serializers.Serializer):
    """The tissue mask as a GeoJSON Feature in level-0 pixels (shape of the response)."""

    type = serializers.CharField(help_text="Always 'Feature'.")
    geometry = serializers.JSONField(allow_null=True, help_text="GeoJSON geometry, or null.")
    properties = TissuePropertiesSerializer()


class TileMetadataSerializer(serializers.Serializer):
    """The deep-zoom pyramid of a slide, as the viewer reads it (shape of the response)."""

    width_px = serializers.IntegerField(help_text="Level-0 width.")
    height_px = serializers.IntegerField(help_text="Level-0 height.")
    tile_px = serializers.IntegerField()
    levels = serializers.IntegerField()
