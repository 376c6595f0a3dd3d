from django.urls import path

from . import api, views

urlpatterns = [
    path("review/assign/", views.assign_slide, name="assign-slide"),
    path("api/classes/", api.ClassListView.as_view(), name="api-classes"),
    path("api/instances/<int:instance_id>/", api.InstanceDetailView.as_view(), name="api-instance"),
    path(
        "api/instances/<int:instance_id>/history/",
        api.InstanceHistoryView.as_view(),
        name="api-instance-history",
    ),
    path(
        "api/instances/<int:instance_id>/<str:action>/",
        api.InstanceChangeView.as_view(),
        name="api-instance-change",
    ),
    path("api/slides/<int:slide_id>/draw/", api.DrawView.as_view(), name="api-draw"),
    path("api/slides/<int:slide_id>/undo/", api.UndoView.as_view(), name="api-undo"),
    path("api/slides/<int:slide_id>/prompt/", api.PromptView.as_view(), name="api-prompt"),
    path("api/slides/<int:slide_id>/history/", api.SlideHistoryView.as_view(), name="api-slide-history"),
    path(
        "api/slides/<int:slide_id>/review-progress/",
        api.SlideProgressView.as_view(),
        name="api-review-progress",
    ),
    path(
        "api/slides/<int:slide_id>/evaluation-regions/",
        api.EvaluationRegionListView.as_view(),
        name="api-evaluation-regions",
    ),
    path(
        "api/evaluation-regions/<int:region_id>/",
        api.EvaluationRegionDetailView.as_view(),
        name="api-evaluation-region",
    ),
    path("api/review/queue/", api.QueueView.as_view(), name="api-review-queue"),
    path("api/review/assignments/", api.AssignmentListView.as_view(), name="api-assignments"),
    path(
        "api/review/assignments/<int:assignment_id>/",
        api.AssignmentDetailView.as_view(),
        name="api-assignment",
    ),
]
