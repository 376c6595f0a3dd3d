from django.urls import path

from . import api

urlpatterns = [
    path(
        "api/slides/<int:slide_id>/proposal-runs/",
        api.ProposalRunListView.as_view(),
        name="api-proposal-runs",
    ),
    path("api/proposal-runs/<int:run_id>/", api.ProposalRunDetailView.as_view(), name="api-proposal-run"),
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
]
