"""Pages: the slide list and the slide viewer. Data comes from the API in the browser."""

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, render

from apps.accounts import audit
from apps.accounts.permissions import page_permission_required

from .models import Slide


@login_required
@page_permission_required("slides.view_slide")
def slide_list(request):
    slides = Slide.objects.annotate(
        objects_total=Count("instances", distinct=True),
        objects_pending=Count("instances", filter=Q(instances__review_state="pending"), distinct=True),
    ).prefetch_related("assignments__reviewer")
    mine = set(request.user.slide_assignments.values_list("slide_id", flat=True))
    can_assign = request.user.has_perm("review.assign_reviewers")
    return render(request, "slides/slide_list.html", {
        "slides": slides,
        "assigned_to_me": mine,
        "can_upload": request.user.has_perm("slides.add_slide"),
        "can_assign": can_assign,
        "can_export": request.user.has_perm("annotations.export_instances"),
        "reviewers": get_user_model().objects.filter(is_active=True).order_by("username")
        if can_assign else [],
    })


@login_required
@page_permission_required("slides.view_slide")
def slide_detail(request, slide_id):
    slide = get_object_or_404(Slide, pk=slide_id)
    audit.record(
        audit.Action.VIEW, user=request.user, target_type=audit.Target.SLIDE,
        target_id=slide.pk, slide_id=slide.pk, detail={"via": "page"},
    )
    return render(request, "slides/slide_detail.html", {
        "slide": slide,
        "can_propose": request.user.has_perm("annotations.add_proposalrun"),
        "can_export": request.user.has_perm("annotations.export_instances"),
    })
