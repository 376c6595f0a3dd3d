from rest_framework import serializers

from .models import Slide


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
    section = serializers.IntegerField(required=False, min_value=0)
    report_ifta_pct = serializers.FloatField(required=False, min_value=0.0, max_value=100.0)
