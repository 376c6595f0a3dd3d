"""Routes of the audit log page and API."""

from django.urls import path

from . import audit_api, audit_views

urlpatterns = [
    path("audit/", audit_views.audit_log, name="audit-log"),
    path("api/audit/events/", audit_api.AuditEventListView.as_view(), name="api-audit-events"),
    path(
        "api/audit/events.csv", audit_api.AuditEventCSVView.as_view(),
        name="api-audit-events-csv",
    ),
]
