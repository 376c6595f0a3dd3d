"""REST endpoints of model evaluations: start one (admins), read one (pathologists, admins)."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import has_perm
from apps.training.models import ModelVersion
from nephroweb.openapi import error_response

from . import evaluations
from .models import ModelEvaluation

EVALUATE = has_perm("analysis.evaluate_models")
VIEW = has_perm("analysis.view_modelevaluation")


class ModelEvaluationSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    model_version_name = serializers.CharField(source="model_version.name", read_only=True)
    leakage_warning = serializers.SerializerMethodField()
    stale = serializers.SerializerMethodField()

    class Meta:
        model = ModelEvaluation
        fields = [
            "id", "model_version", "model_version_name", "status", "inputs_key", "slides",
            "metrics", "message", "leakage_warning", "stale", "created_by", "created_at",
            "finished_at",
        ]

    def get_leakage_warning(self, evaluation) -> str:
        return evaluations.leakage_warning(evaluation)

    def get_stale(self, evaluation) -> bool | None:
        """Return whether the inputs changed since the evaluation succeeded, or None before."""
        if evaluation.status != ModelEvaluation.Status.SUCCEEDED:
            return None
        return evaluations.is_stale(evaluation)


class ModelEvaluationListView(APIView):
    permission_classes = [EVALUATE]

    @extend_schema(
        request=None,
        responses={
            202: ModelEvaluationSerializer,
            400: error_response("Nothing can be evaluated yet. The message names the next step."),
        },
    )
    def post(self, request, version_id):
        version = get_object_or_404(ModelVersion, pk=version_id)
        evaluation = evaluations.start_evaluation(version, user=request.user)
        return Response(ModelEvaluationSerializer(evaluation).data, status=status.HTTP_202_ACCEPTED)


class ModelEvaluationDetailView(APIView):
    permission_classes = [VIEW]

    @extend_schema(responses=ModelEvaluationSerializer)
    def get(self, request, evaluation_id):
        evaluation = get_object_or_404(
            ModelEvaluation.objects.select_related("model_version", "created_by"), pk=evaluation_id
        )
        return Response(ModelEvaluationSerializer(evaluation).data)
