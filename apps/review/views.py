"""Page actions of the review that work without JavaScript."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from apps.accounts.permissions import page_permission_required
from apps.slides.models import Slide

from . import services


@login_required
@page_permission_required("review.assign_reviewers")
@require_POST
def assign_slide(request):
    slide = get_object_or_404(Slide, pk=request.POST.get("slide"))
    reviewer = get_object_or_404(get_user_model(), username=request.POST.get("reviewer"))
    services.assign(slide, reviewer=reviewer, assigned_by=request.user)
    messages.success(request, f"Slide {slide.name} is assigned to {reviewer.username}.")
    return redirect("slide-list")
