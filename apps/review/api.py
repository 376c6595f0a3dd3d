"""REST endpoints of the review: changes to instances, undo, history, queue, progress,
assignments, evaluation regions and the class list."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.permissions import has_perm
from apps.annotations.classes import configured_classes
from apps.annotations.models import EvaluationRegion, Instance, InstanceEvent
from apps.annotations.serializers import InstanceFeatureSerializer, instance_feature
from apps.slides.models import Slide
from nephroweb.openapi import error_response

from . import prompting, selectors, services
from .models import SlideAssignment
from .serializers import (
    AssignmentSerializer,
    ChangeSerializer,
    DrawSerializer,
    EvaluationRegionRequestSerializer,
    EvaluationRegionSerializer,
    EventSerializer,
    PromptSerializer,
    QueueQuerySerializer,
    ReviewClassSerializer,
    SlideProgressSerializer,
    UndoSerializer,
)

# Permission each change needs, on top of viewing the slide.
CHANGE_PERMISSIONS = {
    "accept": "annotations.review_instance",
    "reject": "annotations.review_instance",
    "reopen": "annotations.review_instance",
    "edit": "annotations.review_instance",
    "relabel": "annotations.relabel_instance",
}
CONFLICT = error_response(
    "The instance changed since the given version; the body adds its current state."
)


class ClassListView(APIView):
    permission_classes = [has_perm("slides.view_slide")]

    @extend_schema(responses=ReviewClassSerializer(many=True))
    def get(self, request):
        return Response([
            {"name": c.name, "color": c.color_hex, "key": c.key, "trainable": c.trainable}
            for c in configured_classes()
        ])


class InstanceDetailView(APIView):
    def get_permissions(self):
        if self.request.method == "DELETE":
            return [has_perm("slides.view_slide", "annotations.delete_instance")()]
        return [has_perm("slides.view_slide", "annotations.view_instance")()]

    @extend_schema(responses=InstanceFeatureSerializer)
    def get(self, request, instance_id):
        return Response(instance_feature(get_object_or_404(Instance, pk=instance_id)))

    @extend_schema(
        parameters=[OpenApiParameter(
            "version", int, required=True,
            description="The version the reviewer saw. A JSON body {\"version\": N} also works.",
        )],
        responses={204: None, 409: CONFLICT},
    )
    def delete(self, request, instance_id):
        form = ChangeSerializer(data=request.data or request.query_params)
        form.is_valid(raise_exception=True)
        services.delete(instance_id, user=request.user, version=form.validated_data["version"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class InstanceChangeView(APIView):
    """POST /api/instances/<id>/<action>/ with {"version": N, ...}."""

    def get_permissions(self):
        # Schema generation builds the view without URL arguments, so no "action" there.
        action = self.kwargs.get("action")
        permission = CHANGE_PERMISSIONS.get(action, "annotations.review_instance")
        return [has_perm("slides.view_slide", permission)()]

    @extend_schema(
        parameters=[OpenApiParameter(
            "action", str, OpenApiParameter.PATH, enum=sorted(CHANGE_PERMISSIONS),
            description="relabel needs class_name, edit needs geometry.",
        )],
        request=ChangeSerializer,
        responses={200: InstanceFeatureSerializer, 409: CONFLICT},
    )
    def post(self, request, instance_id, action):
        form = ChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        common = {"user": request.user, "version": data["version"]}
        if action == "accept":
            instance = services.accept(instance_id, **common)
        elif action == "reject":
            instance = services.reject(instance_id, **common)
        elif action == "reopen":
            instance = services.reopen(instance_id, **common)
        elif action == "relabel":
            if not data.get("class_name"):
                raise services.ReviewError("relabel needs the field 'class_name'.")
            instance = services.relabel(instance_id, class_name=data["class_name"], **common)
        elif action == "edit":
            if "geometry" not in data:
                raise services.ReviewError("edit needs the field 'geometry'.")
            if data.get("class_name") and not request.user.has_perm("annotations.relabel_instance"):
                raise services.ReviewError("Your role may edit outlines but not change classes.")
            instance = services.edit(
                instance_id, geometry=data["geometry"], class_name=data.get("class_name"), **common
            )
        else:
            return Response({"detail": f"Unknown action {action!r}."}, status=404)
        return Response(instance_feature(instance))


class DrawView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.review_instance")]

    @extend_schema(request=DrawSerializer, responses={201: InstanceFeatureSerializer})
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        form = DrawSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        instance = services.draw(slide, user=request.user, **form.validated_data)
        return Response(instance_feature(instance), status=status.HTTP_201_CREATED)


class PromptView(APIView):
    """POST {point_level0: [x, y]} or {box_level0: [x0, y0, x1, y1]} and class_name."""

    permission_classes = [has_perm("slides.view_slide", "annotations.review_instance")]

    @extend_schema(
        request=PromptSerializer,
        responses={
            201: InstanceFeatureSerializer,
            422: error_response("SAM found no object at the prompt."),
        },
    )
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        form = PromptSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        instance = prompting.draw_with_prompt(
            slide, user=request.user, class_name=data["class_name"],
            point_level0=data.get("point_level0"), box_level0=data.get("box_level0"),
        )
        return Response(instance_feature(instance), status=status.HTTP_201_CREATED)


class UndoView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.review_instance")]

    @extend_schema(
        request=None,
        responses={
            200: UndoSerializer, 400: error_response("Nothing of yours to undo."), 409: CONFLICT,
        },
    )
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        undo = services.undo_last(slide, user=request.user)
        instance = Instance.objects.filter(pk=undo.instance_ref).first()
        return Response({
            "undone": EventSerializer(undo.undoes).data,
            "instance": instance_feature(instance) if instance else None,
            "deleted_id": None if instance else undo.instance_ref,
        })


class InstanceHistoryView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.view_instance")]

    @extend_schema(responses=EventSerializer(many=True))
    def get(self, request, instance_id):
        events = InstanceEvent.objects.filter(instance_ref=instance_id).select_related("user")
        return Response(EventSerializer(events[:200], many=True).data)


class SlideHistoryView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.view_instance")]

    @extend_schema(responses=EventSerializer(many=True))
    def get(self, request, slide_id):
        events = InstanceEvent.objects.filter(slide_id=slide_id).select_related("user")
        return Response(EventSerializer(events[:200], many=True).data)


class QueueView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.view_instance")]

    @extend_schema(
        parameters=[QueueQuerySerializer],
        responses={
            200: InstanceFeatureSerializer(many=True),
            404: error_response("No slide has the id given in 'slide'."),
        },
    )
    def get(self, request):
        query = QueueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        options = query.validated_data
        slide = get_object_or_404(Slide, pk=options["slide"]) if "slide" in options else None
        instances = selectors.review_queue(
            order=options.get("order"),
            slide=slide,
            reviewer=request.user if options.get("assigned") == "me" else None,
            limit=options["limit"],
        )
        return Response([instance_feature(i) for i in instances])


class SlideProgressView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.view_instance")]

    @extend_schema(responses=SlideProgressSerializer)
    def get(self, request, slide_id):
        return Response(selectors.slide_progress(get_object_or_404(Slide, pk=slide_id)))


class AssignmentListView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [has_perm("review.assign_reviewers")()]
        return [has_perm("slides.view_slide")()]

    @extend_schema(responses=AssignmentSerializer(many=True))
    def get(self, request):
        assignments = SlideAssignment.objects.select_related("reviewer", "assigned_by")
        if not request.user.has_perm("review.assign_reviewers"):
            assignments = assignments.filter(reviewer=request.user)
        return Response(AssignmentSerializer(assignments, many=True).data)

    @extend_schema(request=AssignmentSerializer, responses={201: AssignmentSerializer})
    def post(self, request):
        form = AssignmentSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        assignment = services.assign(
            form.validated_data["slide"], reviewer=form.validated_data["reviewer"],
            assigned_by=request.user,
        )
        return Response(AssignmentSerializer(assignment).data, status=status.HTTP_201_CREATED)


class AssignmentDetailView(APIView):
    permission_classes = [has_perm("review.assign_reviewers")]

    @extend_schema(responses={204: None})
    def delete(self, request, assignment_id):
        assignment = get_object_or_404(
            SlideAssignment.objects.select_related("reviewer"), pk=assignment_id
        )
        services.unassign(assignment, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _region_json(region):
    return {"id": region.pk, "slide": region.slide_id, "geometry": region.geometry,
            "created_by": region.created_by.username if region.created_by else "",
            "created_at": region.created_at}


class EvaluationRegionListView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [has_perm("slides.view_slide", "annotations.add_evaluationregion")()]
        return [has_perm("slides.view_slide", "annotations.view_evaluationregion")()]

    @extend_schema(responses=EvaluationRegionSerializer(many=True))
    def get(self, request, slide_id):
        regions = EvaluationRegion.objects.filter(slide_id=slide_id).select_related("created_by")
        return Response([_region_json(r) for r in regions])

    @extend_schema(
        request=EvaluationRegionRequestSerializer, responses={201: EvaluationRegionSerializer}
    )
    def post(self, request, slide_id):
        slide = get_object_or_404(Slide, pk=slide_id)
        form = EvaluationRegionRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        region = services.add_evaluation_region(
            slide, user=request.user, geometry=form.validated_data["geometry"]
        )
        return Response(_region_json(region), status=status.HTTP_201_CREATED)


class EvaluationRegionDetailView(APIView):
    permission_classes = [has_perm("slides.view_slide", "annotations.delete_evaluationregion")]

    @extend_schema(responses={204: None})
    def delete(self, request, region_id):
        services.remove_evaluation_region(
            get_object_or_404(EvaluationRegion, pk=region_id), user=request.user
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
