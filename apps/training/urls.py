from django.urls import path

from . import api, views

urlpatterns = [
    path("training/", views.training_page, name="training"),
    path("api/training/snapshots/", api.SnapshotListView.as_view(), name="api-training-snapshots"),
    path("api/training/versions/", api.ModelVersionListView.as_view(), name="api-training-versions"),
    path(
        "api/training/versions/<int:version_id>/",
        api.ModelVersionDetailView.as_view(),
        name="api-training-version",
    ),
    path(
        "api/training/versions/<int:version_id>/cancel/",
        api.ModelVersionCancelView.as_view(),
        name="api-training-version-cancel",
    ),
]
