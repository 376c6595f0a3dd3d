from django.urls import path

from . import api, views

urlpatterns = [
    path("", views.slide_list, name="slide-list"),
    path("slides/<int:slide_id>/", views.slide_detail, name="slide-detail"),
    path("api/slides/", api.SlideListView.as_view(), name="api-slide-list"),
    path("api/slides/<int:slide_id>/", api.SlideDetailView.as_view(), name="api-slide-detail"),
    path("api/slides/<int:slide_id>/tissue/", api.TissueView.as_view(), name="api-slide-tissue"),
    path("api/slides/<int:slide_id>/tiles/", api.TileMetadataView.as_view(), name="api-tile-metadata"),
    path(
        "api/slides/<int:slide_id>/tiles/<int:z>/<int:x>/<int:y>.jpg",
        api.tile_view,
        name="api-tile",
    ),
    path("api/slides/<int:slide_id>/thumbnail.jpg", api.thumbnail_view, name="api-thumbnail"),
]
