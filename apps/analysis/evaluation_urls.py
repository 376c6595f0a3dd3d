"""Routes of the evaluation pages and API."""

from django.urls import path

from . import evaluation_api, evaluation_views

urlpatterns = [
    path("models/", evaluation_views.model_comparison, name="model-comparison"),
    path(
        "models/<int:version_id>/evaluate/",
        evaluation_views.evaluate_model,
        name="model-evaluate",
    ),
    path(
        "api/model-versions/<int:version_id>/evaluations/",
        evaluation_api.ModelEvaluationListView.as_view(),
        name="api-model-evaluations",
    ),
    path(
        "api/model-evaluations/<int:evaluation_id>/",
        evaluation_api.ModelEvaluationDetailView.as_view(),
        name="api-model-evaluation",
    ),
]
