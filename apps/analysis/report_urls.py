"""Routes of the report pages and API: the agreement dashboard, report entry, read-out CSVs."""

from django.urls import path

from . import dashboard_views, readout_export_api

urlpatterns = [
    path("dashboard/", dashboard_views.dashboard, name="dashboard"),
    path(
        "dashboard/agreement-scatter.png", dashboard_views.scatter_png,
        name="dashboard-scatter-png",
    ),
    path(
        "dashboard/bland-altman.png", dashboard_views.bland_altman_png,
        name="dashboard-bland-altman-png",
    ),
    path(
        "dashboard/patient-reports/", dashboard_views.patient_report_entry,
        name="dashboard-patient-report",
    ),
    path(
        "dashboard/report-imports/", dashboard_views.report_import,
        name="dashboard-report-import",
    ),
    path(
        "api/slides/<int:slide_id>/readouts.csv", readout_export_api.SlideReadoutsCSVView.as_view(),
        name="api-slide-readouts-csv",
    ),
    path(
        "api/export/readouts.csv", readout_export_api.CohortReadoutsCSVView.as_view(),
        name="api-export-readouts-csv",
    ),
]
