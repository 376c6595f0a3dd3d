"""REST endpoints of the audit log: the filtered events as JSON pages and as CSV. Admins only."""

from django.http import HttpResponse
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from . import audit
from .audit_log import AuditFilterForm, event_row, events_csv, filter_values, filtered_events
from .permissions import has_perm

VIEW_AUDIT_LOG = has_perm("accounts.view_auditevent")


class AuditEventPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def _filters_or_errors(request):
    """Return (cleaned filters, None), or (None, a 400 response naming the invalid fields)."""
    form = AuditFilterForm(request.query_params)
    if not form.is_valid():
        return None, Response(form.errors, status=400)
    return form.cleaned_data, None


class AuditEventListView(APIView):
    """GET ``?user=&action=&slide=&date_from=&date_to=&page=&page_size=``, newest first."""

    permission_classes = [VIEW_AUDIT_LOG]

    def get(self, request):
        filters, errors = _filters_or_errors(request)
        if errors is not None:
            return errors
        paginator = AuditEventPagination()
        page = paginator.paginate_queryset(filtered_events(filters), request, view=self)
        return paginator.get_paginated_response([event_row(event) for event in page])


class AuditEventCSVView(APIView):
    """GET the events that match the same filters as one CSV file, newest first."""

    permission_classes = [VIEW_AUDIT_LOG]

    def get(self, request):
        filters, errors = _filters_or_errors(request)
        if errors is not None:
            return errors
        file_name = "audit-log.csv"
        download = audit.record(
            audit.Action.EXPORT, user=request.user, target_type=audit.Target.AUDIT_LOG,
            detail={"file_name": file_name, "filters": filter_values(filters)},
        )
        # The file contains the rows that matched when it was requested, not its own row.
        events = filtered_events(filters).exclude(pk=download.pk)
        # A byte order mark makes spreadsheet programs read the file as UTF-8.
        response = HttpResponse(
            "\ufeff" + events_csv(events), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="{file_name}"'
        return response
