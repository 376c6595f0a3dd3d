"""Pages and API of model evaluations, clinical read-outs, report agreement and exports."""

from django.urls import include, path

urlpatterns = [
    path("", include("apps.analysis.evaluation_urls")),
    path("", include("apps.analysis.readout_urls")),
    path("", include("apps.analysis.report_urls")),
]
