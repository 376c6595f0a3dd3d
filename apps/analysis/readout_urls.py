"""Routes of the readout pages and API."""

from django.urls import path

from . import readout_api

urlpatterns = [
    path(
        "api/slides/<int:slide_id>/readouts/",
        readout_api.SlideReadoutListView.as_view(),
        name="api-slide-readouts",
    ),
    path(
        "api/slides/<int:slide_id>/ifta-regions/",
        readout_api.IftaRegionsView.as_view(),
        name="api-slide-ifta-regions",
    ),
]
