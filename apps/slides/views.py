"""Pages: the slide list and the slide viewer. Data comes from the API in the browser."""

from django.contrib.auth.decorators import login_required, permission_required
from django.shortcuts import get_object_or_404, render

from .models import Slide


@login_required
@permission_required("slides.view_slide", raise_exception=True)
def slide_list(request):
    return render(request, "slides/slide_list.html", {
        "slides": Slide.objects.all(),
        "can_upload": request.user.has_perm("slides.add_slide"),
    })


@login_required
@permission_required("slides.view_slide", raise_exception=True)
def slide_detail(request, slide_id):
    slide = get_object_or_404(Slide, pk=slide_id)
    return render(request, "slides/slide_detail.html", {
        "slide": slide,
        "can_propose": request.user.has_perm("annotations.add_proposalrun"),
        "can_export": request.user.has_perm("annotations.export_instances"),
    })
