from django.contrib.auth import get_user_model
from rest_framework import serializers

from apps.annotations.models import InstanceEvent
from apps.annotations.serializers import InstanceFeatureSerializer
from apps.slides.models import Slide

from .models import SlideAssignment
from .selectors import QUEUE_ORDERS


class ChangeSerializer(serializers.Serializer):
    """Body of a review change: the version the reviewer saw, and what the action needs."""

    version = serializers.IntegerField(min_value=1)
    class_name = serializers.CharField(required=False, max_length=64)
    geometry = serializers.JSONField(required=False)


class DrawSerializer(serializers.Serializer):
    geometry = serializers.JSONField()
    class_name = serializers.CharField(max_length=64)


class PromptSerializer(serializers.Serializer):
    point_level0 = serializers.ListField(
        child=serializers.FloatField(), min_length=2, max_length=2, required=False
    )
    box_level0 = serializers.ListField(
        child=serializers.FloatField(), min_length=4, max_length=4, required=False
    )
    class_name = serializers.CharField(max_length=64)


class QueueQuerySerializer(serializers.Serializer):
    slide = serializers.IntegerField(required=False)
    order = serializers.ChoiceField(choices=sorted(QUEUE_ORDERS), required=False)
    assigned = serializers.ChoiceField(choices=["me"], required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=2000, default=200)


class EventSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username", default="")

    class Meta:
        model = InstanceEvent
        fields = ["id", "instance_ref", "user", "action", "before", "after", "undoes", "created_at"]


class AssignmentSerializer(serializers.ModelSerializer):
    slide = serializers.PrimaryKeyRelatedField(queryset=Slide.objects.all())
    reviewer = serializers.SlugRelatedField(
        slug_field="username", queryset=get_user_model().objects.all()
    )
    assigned_by = serializers.CharField(source="assigned_by.username", read_only=True, default="")

    class Meta:
        model = SlideAssignment
        fields = ["id", "slide", "reviewer", "assigned_by", "created_at"]
        read_only_fields = ["id", "assigned_by", "created_at"]


# Shapes of the hand-built responses of apps/review/api.py, for the OpenAPI schema.


class ReviewClassSerializer(serializers.Serializer):
    name = serializers.CharField()
    color = serializers.CharField(help_text="Display colour, #rrggbb.")
    key = serializers.CharField(help_text="Keyboard key that assigns the class.")
    trainable = serializers.BooleanField()


class UndoSerializer(serializers.Serializer):
    undone = EventSerializer(help_text="The event that was undone.")
    instance = InstanceFeatureSerializer(allow_null=True, help_text="The restored instance.")
    deleted_id = serializers.IntegerField(
        allow_null=True, help_text="Id of the instance the undo removed, else null."
    )


class SlideProgressSerializer(serializers.Serializer):
    slide = serializers.IntegerField()
    total = serializers.IntegerField()
    by_state = serializers.DictField(child=serializers.IntegerField())
    by_class = serializers.DictField(child=serializers.IntegerField())
    by_reviewer = serializers.DictField(child=serializers.IntegerField())
    reviewed_fraction = serializers.FloatField(allow_null=True)


class EvaluationRegionRequestSerializer(serializers.Serializer):
    geometry = serializers.JSONField(help_text="GeoJSON Polygon in level-0 pixels.")


class EvaluationRegionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slide = serializers.IntegerField()
    geometry = serializers.JSONField(help_text="GeoJSON Polygon in level-0 pixels.")
    created_by = serializers.CharField(help_text="User name, empty once the user is deleted.")
    created_at = serializers.DateTimeField()
