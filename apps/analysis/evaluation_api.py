"""REST endpoints of model evaluations: start one (admins), read one (pathologists, admins)."""

from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import has_perm
from apps.training.models import ModelVersion

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

    def get_leakage_warning(self, evaluation):
        return evaluations.leakage_warning(evaluation)

    def get_stale(self, evaluation):
        """Return whether the inputs changed since the evaluation succeeded, or None before."""
        if evaluation.status != ModelEvaluation.Status.SUCCEEDED:
            return None
        return evaluations.is_stale(evaluation)


class ModelEvaluationListView(APIView):
    permission_classes = [EVALUATE]

    def post(self, request, version_id):
        version = get_object_or_404(ModelVersion, pk=version_id)
        evaluation = evaluations.start_evaluation(version, user=request.user)
        return Response(ModelEvaluationSerializer(evaluation).data, status=status.HTTP_202_ACCEPTED)


class ModelEvaluationDetailView(APIView):
    permission_classes = [VIEW]

    def get(self, request, evaluation_id):
        evaluation = get_object_or_404(
            ModelEvaluation.objects.select_related("model_version", "created_by"), pk=evaluation_id
        )
        return Response(ModelEvaluationSerializer(evaluation).data)
