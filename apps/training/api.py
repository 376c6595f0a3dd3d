"""REST endpoints of training: snapshots and model versions. Admins only."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import has_perm
from nephroweb.openapi import error_response

from . import services, snapshots
from .models import ModelVersion, TrainingSnapshot

TRAIN = has_perm("training.train_models")
LIST_LIMIT = 50


class SnapshotRequestSerializer(serializers.Serializer):
    seed = serializers.IntegerField(min_value=0, max_value=snapshots.MAX_SEED, default=0)
    validation_fraction = serializers.FloatField(min_value=0.0, max_value=0.9, default=0.2)
    parent = serializers.PrimaryKeyRelatedField(
        queryset=TrainingSnapshot.objects.all(), required=False, allow_null=True
    )


class SnapshotSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    instance_count = serializers.SerializerMethodField()

    class Meta:
        model = TrainingSnapshot
        fields = [
            "id", "created_at", "created_by", "parent", "seed", "validation_fraction",
            "class_names", "class_counts", "instance_count", "evaluation_region_ids",
            "train_patients", "validation_patients",
        ]

    def get_instance_count(self, snapshot) -> int:
        return sum(snapshot.class_counts.values())


class ModelVersionRequestSerializer(serializers.Serializer):
    snapshot = serializers.PrimaryKeyRelatedField(queryset=TrainingSnapshot.objects.all())
    name = serializers.CharField(max_length=128, required=False, allow_blank=True, default="")
    checkpoint = serializers.CharField(max_length=1024, required=False, allow_blank=True, default="")
    # The serializer checks that the version exists, and start_training that it succeeded.
    base_version = serializers.PrimaryKeyRelatedField(
        queryset=ModelVersion.objects.all(), required=False, allow_null=True, default=None
    )
    config = serializers.DictField(required=False, default=dict)
    mpp = serializers.FloatField(required=False, min_value=0.05, max_value=50)
    crop_px = serializers.IntegerField(required=False, min_value=16, max_value=4096)


class ModelVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    seconds_remaining = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "status", "snapshot", "base_version", "base_checkpoint",
            "base_checkpoint_sha256",
            "config", "device_auto", "mpp", "crop_px", "class_names", "metrics", "best_epoch",
            "weights_path", "weights_sha256", "message", "cancel_requested", "created_by",
            "created_at", "started_at", "finished_at", "seconds_remaining",
        ]

    def get_seconds_remaining(self, version) -> int | None:
        return services.version_seconds_remaining(version)


class SnapshotListView(APIView):
    permission_classes = [TRAIN]

    @extend_schema(responses=SnapshotSerializer(many=True))
    def get(self, request):
        rows = TrainingSnapshot.objects.select_related("created_by")[:LIST_LIMIT]
        return Response(SnapshotSerializer(rows, many=True).data)

    @extend_schema(request=SnapshotRequestSerializer, responses={201: SnapshotSerializer})
    def post(self, request):
        form = SnapshotRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        snapshot = snapshots.build_snapshot(
            request.user,
            seed=form.validated_data["seed"],
            validation_fraction=form.validated_data["validation_fraction"],
            parent=form.validated_data.get("parent"),
        )
        return Response(SnapshotSerializer(snapshot).data, status=status.HTTP_201_CREATED)


class ModelVersionListView(APIView):
    permission_classes = [TRAIN]

    @extend_schema(responses=ModelVersionSerializer(many=True))
    def get(self, request):
        rows = ModelVersion.objects.select_related("created_by")[:LIST_LIMIT]
        return Response(ModelVersionSerializer(rows, many=True).data)

    @extend_schema(request=ModelVersionRequestSerializer, responses={201: ModelVersionSerializer})
    def post(self, request):
        form = ModelVersionRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        version = services.start_training(
            data["snapshot"],
            request.user,
            base_checkpoint=data["checkpoint"],
            config_overrides=data["config"],
            base_version=data["base_version"],
            name=data["name"],
            mpp=data.get("mpp"),
            crop_px=data.get("crop_px"),
        )
        return Response(ModelVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class ModelVersionDetailView(APIView):
    permission_classes = [TRAIN]

    @extend_schema(responses=ModelVersionSerializer)
    def get(self, request, version_id):
        return Response(ModelVersionSerializer(get_object_or_404(ModelVersion, pk=version_id)).data)


class ModelVersionCancelView(APIView):
    permission_classes = [TRAIN]

    @extend_schema(
        request=None,
        responses={
            200: ModelVersionSerializer,
            409: error_response("The version has already finished."),
        },
    )
    def post(self, request, version_id):
        version = services.cancel_training(
            get_object_or_404(ModelVersion, pk=version_id), user=request.user
        )
        return Response(ModelVersionSerializer(version).data)
