from django.urls import path

from . import api

urlpatterns = [
    path(
        "api/slides/<int:slide_id>/proposal-runs/",
        api.ProposalRunListView.as_view(),
        name="api-proposal-runs",
    ),
    path(
        "api/segmentation-models/",
        api.SegmentationModelListView.as_view(),
        name="api-segmentation-models",
    ),
    path("api/proposal-runs/<int:run_id>/", api.ProposalRunDetailView.as_view(), name="api-proposal-run"),
    path(
        "api/proposal-runs/<int:run_id>/cancel/",
        api.ProposalRunCancelView.as_view(),
        name="api-proposal-run-cancel",
    ),
    path(
        "api/slides/<int:slide_id>/instances/",
        api.InstanceViewportView.as_view(),
        name="api-instances",
    ),
    path(
        "api/slides/<int:slide_id>/export.geojson",
        api.GeoJSONExportView.as_view(),
        name="api-export-geojson",
    ),
    path(
        "api/slides/<int:slide_id>/export.csv",
        api.SlideCountsCSVView.as_view(),
        name="api-export-slide-csv",
    ),
    path(
        "api/slides/<int:slide_id>/annotation-imports/",
        api.AnnotationImportView.as_view(),
        name="api-annotation-import",
    ),
    path("api/export/cohort.csv", api.CohortCountsCSVView.as_view(), name="api-export-cohort-csv"),
    path(
        "api/export/reviewers.csv",
        api.CohortReviewersCSVView.as_view(),
        name="api-export-reviewers-csv",
    ),
]
