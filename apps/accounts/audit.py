"""The audit log's one writer: ``record`` stores who viewed, changed, exported or trained what.

Callers that change data call ``record`` inside the ``transaction.atomic`` block of the
change, so the change and its audit row commit together or not at all. Callers of
read-only events (view, export) call it before they return the response. The client's
IP address comes from ``AuditRequestMiddleware``, so service functions need no request.
What is logged and what is not is listed in docs/audit.md.
"""

from __future__ import annotations

import contextvars
import ipaddress

from .models import AuditEvent

Action = AuditEvent.Action
Target = AuditEvent.Target

# The IP address of the request being handled, or None outside a request (commands, workers).
_client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "audit_client_ip", default=None
)


def record(
    action: str,
    *,
    user=None,
    target_type: str,
    target_id: int | None = None,
    slide_id: int | None = None,
    detail: dict | None = None,
    username: str | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """Insert one audit row and return it.

    Args:
        action: One of ``AuditEvent.Action``.
        user: Who acted; None (or an anonymous user) for the command line and workers.
        target_type: One of ``AuditEvent.Target``.
        target_id: Primary key of the target, or None for targets without one (a cohort).
        slide_id: The slide the target belongs to, when there is one.
        detail: A small JSON-serialisable dict, e.g. the review change or a file name.
        username: Overrides the stored name, e.g. the name typed in a failed sign-in.
        ip_address: Overrides the address of the current request.

    Raises:
        ValueError: ``action`` or ``target_type`` is not in the vocabulary.
    """
    if action not in Action.values:
        raise ValueError(f"Unknown audit action {action!r}; expected one of {Action.values}.")
    if target_type not in Target.values:
        raise ValueError(
            f"Unknown audit target type {target_type!r}; expected one of {Target.values}."
        )
    if user is not None and not user.is_authenticated:
        user = None
    if username is None:
        username = user.get_username() if user is not None else ""
    return AuditEvent.objects.create(
        user=user,
        username=username[:150],
        action=action,
        target_type=target_type,
        target_id=target_id,
        slide_id=slide_id,
        detail=detail or {},
        ip_address=ip_address if ip_address is not None else _client_ip.get(),
    )


def record_export(user, file_name: str, *, slide_id: int | None = None, **detail) -> AuditEvent:
    """Record a download: of one slide when ``slide_id`` is given, otherwise of a cohort.

    ``detail`` adds filter values such as the cohort name to the row's detail.
    """
    return record(
        Action.EXPORT, user=user,
        target_type=Target.SLIDE if slide_id is not None else Target.COHORT,
        target_id=slide_id, slide_id=slide_id, detail={"file_name": file_name, **detail},
    )


def client_ip(request) -> str | None:
    """Return the request's client address (REMOTE_ADDR), or None when it is no IP address.

    Behind a reverse proxy, REMOTE_ADDR is the proxy's address unless the server takes
    the client from the proxy's headers (daphne's ``--proxy-headers``). X-Forwarded-For
    is not read here, because any client can send it.
    """
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


class AuditRequestMiddleware:
    """Make the current request's client address available to ``record``."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _client_ip.set(client_ip(request))
        try:
            return self.get_response(request)
        finally:
            _client_ip.reset(token)


# ---------------------------------------------------------------------------- sign-in


def record_login(sender, request, user, **kwargs):
    """Record a successful sign-in (receiver of Django's ``user_logged_in``)."""
    record(
        Action.LOGIN, user=user, target_type=Target.USER, target_id=user.pk,
        ip_address=client_ip(request) if request is not None else None,
    )


def record_login_failed(sender, credentials, request=None, **kwargs):
    """Record a failed sign-in with the name that was typed (``user_login_failed``).

    Django replaces the password in ``credentials`` before it sends the signal, and only
    the user name is stored. The target is that user when the name exists.
    """
    from django.contrib.auth import get_user_model

    model = get_user_model()
    typed = str(credentials.get(model.USERNAME_FIELD) or "")
    existing = None
    if typed:
        existing = model._default_manager.filter(**{model.USERNAME_FIELD: typed}).first()
    record(
        Action.LOGIN_FAILED, username=typed, target_type=Target.USER,
        target_id=existing.pk if existing is not None else None,
        ip_address=client_ip(request) if request is not None else None,
    )


def record_logout(sender, request, user, **kwargs):
    """Record a sign-out (``user_logged_out``); a request without a signed-in user is skipped."""
    if user is None:
        return
    record(
        Action.LOGOUT, user=user, target_type=Target.USER, target_id=user.pk,
        ip_address=client_ip(request) if request is not None else None,
    )
