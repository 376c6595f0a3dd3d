"""The audit log page: filter form, newest events first, page by page. Admins only."""

from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .audit_log import PAGE_SIZE, AuditFilterForm, filter_values, filtered_events
from .permissions import page_permission_required


@login_required
@page_permission_required("accounts.view_auditevent")
@require_GET
def audit_log(request):
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "accounts/audit_log.html", {"form": form}, status=400)
    paginator = Paginator(filtered_events(form.cleaned_data), PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "accounts/audit_log.html", {
        "form": form,
        "page": page,
        "query": urlencode(filter_values(form.cleaned_data)),
    })
