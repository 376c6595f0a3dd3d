from django.contrib.auth import get_user_model
from rest_framework import serializers

from apps.annotations.models import InstanceEvent
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
