"""REST endpoints of the audit log: the filtered events as JSON pages and as CSV. Admins only."""

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from nephroweb.openapi import error_response

from . import audit
from .audit_log import AuditFilterForm, event_row, events_csv, filter_values, filtered_events
from .models import AuditEvent
from .permissions import has_perm

VIEW_AUDIT_LOG = has_perm("accounts.view_auditevent")


class AuditEventPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


# The query parameters of AuditFilterForm, for the OpenAPI schema.
FILTER_PARAMETERS = [
    OpenApiParameter("user", str, description="User name, exact."),
    OpenApiParameter("action", str, enum=AuditEvent.Action.values),
    OpenApiParameter("slide", int, description="Slide id, at least 1."),
    OpenApiParameter("date_from", OpenApiTypes.DATE, description="First day (UTC), inclusive."),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="Last day (UTC), inclusive."),
]


class AuditEventRowSerializer(serializers.Serializer):
    """One event as ``event_row`` returns it."""

    id = serializers.IntegerField()
    time_utc = serializers.DateTimeField()
    username = serializers.CharField()
    user_id = serializers.IntegerField(allow_null=True)
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_id = serializers.IntegerField(allow_null=True)
    slide_id = serializers.IntegerField(allow_null=True)
    ip_address = serializers.CharField(allow_null=True)
    detail = serializers.JSONField()


class AuditEventPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = AuditEventRowSerializer(many=True)


def _filters_or_errors(request):
    """Return (cleaned filters, None), or (None, a 400 response naming the invalid fields)."""
    form = AuditFilterForm(request.query_params)
    if not form.is_valid():
        return None, Response(form.errors, status=400)
    return form.cleaned_data, None


class AuditEventListView(APIView):
    """GET ``?user=&action=&slide=&date_from=&date_to=&page=&page_size=``, newest first."""

    permission_classes = [VIEW_AUDIT_LOG]

    @extend_schema(
        parameters=FILTER_PARAMETERS + [
            OpenApiParameter("page", int, description="Page number, from 1."),
            OpenApiParameter(
                "page_size", int, description="Events per page, 50 unless given, at most 500."
            ),
        ],
        responses={
            200: AuditEventPageSerializer,
            404: error_response("The page number is past the last page."),
        },
    )
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

    @extend_schema(parameters=FILTER_PARAMETERS, responses={(200, "text/csv"): OpenApiTypes.STR})
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
