from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from nephroweb.time_remaining import estimate_seconds_remaining

from .models import ProposalRun
from .run_queue import work_ahead


class ProposalRunSerializer(serializers.ModelSerializer):
    """A proposal run; ``model_version`` is set for a segmentation run of that version."""

    model_version_name = serializers.CharField(
        source="model_version.name", default=None, read_only=True, allow_null=True
    )
    seconds_remaining = serializers.SerializerMethodField()
    work_ahead = serializers.SerializerMethodField()

    class Meta:
        model = ProposalRun
        fields = [
            "id", "slide", "status", "sam_type", "model_version", "model_version_name",
            "checkpoint_sha256", "settings", "counts", "tiles_done", "tiles_total", "message",
            "cancel_requested", "created_at", "started_at", "finished_at", "seconds_remaining",
            "work_ahead",
        ]
        read_only_fields = fields

    def get_seconds_remaining(self, run) -> int | None:
        """Estimate the seconds until a running run has all its tiles, or None when not running."""
        if run.status != ProposalRun.Status.RUNNING:
            return None
        return estimate_seconds_remaining(run.started_at, run.tiles_done, run.tiles_total)

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_work_ahead(self, run) -> list[str]:
        """Return the gpu-queue tasks that a queued run waits for, oldest first; else empty."""
        return work_ahead(run)


class ProposalRunRequestSerializer(serializers.Serializer):
    """Start SAM proposals, or with ``model_version`` a segmentation run of that version."""

    sam_type = serializers.ChoiceField(choices=["vit_b", "vit_l", "vit_h"], required=False)
    model_version = serializers.IntegerField(required=False, min_value=1)
    settings = serializers.DictField(required=False)

    def validate(self, data):
        if "model_version" in data and "sam_type" in data:
            raise serializers.ValidationError(
                {"sam_type": "Give sam_type for SAM proposals or model_version for a "
                             "segmentation run, not both."}
            )
        return data


class ViewportSerializer(serializers.Serializer):
    """``bbox`` is x_min,y_min,x_max,y_max in level-0 pixels."""

    bbox = serializers.CharField()
    limit = serializers.IntegerField(required=False, min_value=1, max_value=20000, default=5000)

    def validate_bbox(self, value):
        try:
            numbers = [float(v) for v in value.split(",")]
        except ValueError:
            raise serializers.ValidationError("bbox must be four numbers: x_min,y_min,x_max,y_max.")
        if len(numbers) != 4 or numbers[0] > numbers[2] or numbers[1] > numbers[3]:
            raise serializers.ValidationError(
                "bbox must be four numbers x_min,y_min,x_max,y_max with min <= max."
            )
        return numbers


FEATURE_PROPERTIES = (
    "class_name", "review_state", "source", "predicted_iou", "stability_score",
    "class_confidence", "area_um2", "version",
)


def instance_feature(instance) -> dict:
    """Return an instance as a GeoJSON Feature in level-0 pixels, with the viewer's fields."""
    properties = {name: getattr(instance, name) for name in FEATURE_PROPERTIES}
    properties["slide"] = instance.slide_id
    run = instance.proposal_run if instance.proposal_run_id else None
    properties["model_version_name"] = run.model_version.name if run and run.model_version_id else None
    return {"type": "Feature", "id": instance.pk, "geometry": instance.geometry,
            "properties": properties}


# Shapes of the hand-built responses below, for the OpenAPI schema (nephroweb/openapi.py).


class ViewportFeaturePropertiesSerializer(serializers.Serializer):
    class_name = serializers.CharField(help_text="Empty for an unlabelled proposal.")
    review_state = serializers.CharField()
    source = serializers.CharField()
    predicted_iou = serializers.FloatField(allow_null=True)
    stability_score = serializers.FloatField(allow_null=True)
    class_confidence = serializers.FloatField(allow_null=True)
    area_um2 = serializers.FloatField()
    version = serializers.IntegerField()
    model_version_name = serializers.CharField(allow_null=True)


class InstanceFeaturePropertiesSerializer(ViewportFeaturePropertiesSerializer):
    slide = serializers.IntegerField()


class ViewportFeatureSerializer(serializers.Serializer):
    """An instance as a GeoJSON Feature in level-0 pixels, as the viewport lists it."""

    type = serializers.CharField(help_text="Always 'Feature'.")
    id = serializers.IntegerField()
    geometry = serializers.JSONField(help_text="GeoJSON Polygon or MultiPolygon.")
    properties = ViewportFeaturePropertiesSerializer()


class InstanceFeatureSerializer(ViewportFeatureSerializer):
    """One instance as a GeoJSON Feature in level-0 pixels (``instance_feature``)."""

    properties = InstanceFeaturePropertiesSerializer()


class ViewportFeatureCollectionSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="Always 'FeatureCollection'.")
    features = ViewportFeatureSerializer(many=True)
    truncated = serializers.BooleanField(help_text="More instances overlap than ``limit``.")


class SegmentationModelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    class_names = serializers.ListField(child=serializers.CharField())
    mpp = serializers.FloatField()
    best_epoch = serializers.IntegerField()
    finished_at = serializers.DateTimeField(allow_null=True)


class AnnotationImportRequestSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="QuPath GeoJSON, ASAP XML or Aperio XML.")
    mapping = serializers.CharField(
        required=False,
        help_text='JSON object from class names in the file to classes, "" to leave one out.',
    )


class SkippedAnnotationSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    reason = serializers.CharField()


class ImportReportSerializer(serializers.Serializer):
    """Counts of an annotation import, created and left out (``ImportReport.as_dict``)."""

    source = serializers.CharField()
    format = serializers.CharField()
    created = serializers.IntegerField()
    created_per_class = serializers.DictField(child=serializers.IntegerField())
    left_out_by_mapping = serializers.DictField(child=serializers.IntegerField())
    skipped = SkippedAnnotationSerializer(many=True)
    outside_slide = serializers.IntegerField()
    clipped = serializers.IntegerField()
    repaired = serializers.IntegerField()
    approximated_splines = serializers.IntegerField()
