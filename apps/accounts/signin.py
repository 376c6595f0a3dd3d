"""The sign-in page and the admin site's sign-in form, both behind the sign-in throttle.

A locked user name or client address is rejected before its password is checked. The
page returns status 429 with the lock's message and a Retry-After header. The admin
site shows the same message on its own sign-in page.
"""

import math

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.exceptions import ValidationError

from . import signin_throttle
from .audit import client_ip

STORE_UNAVAILABLE = "signin_store_unavailable"
# Seconds after which a client may try again while the store is down.
STORE_RETRY_AFTER_S = 60


def _current_lock(form) -> signin_throttle.Lock | None:
    username = form.cleaned_data.get("username") or ""
    ip_address = client_ip(form.request) if form.request is not None else None
    return signin_throttle.current_lock(username, ip_address)


class ThrottleCheckMixin:
    """Reject a locked user name or client address before the password is checked, and
    every sign-in while the throttle's store cannot be reached."""

    def clean(self):
        try:
            lock = _current_lock(self)
            if lock is not None:
                raise ValidationError(lock.message(), code="signin_locked")
            return super().clean()
        except signin_throttle.StoreUnavailable as exc:
            raise ValidationError(
                signin_throttle.STORE_UNAVAILABLE_MESSAGE, code=STORE_UNAVAILABLE
            ) from exc


class ThrottledAuthenticationForm(ThrottleCheckMixin, AuthenticationForm):
    """The sign-in page's form."""


class ThrottledAdminAuthenticationForm(ThrottleCheckMixin, AdminAuthenticationForm):
    """The admin site's sign-in form (/admin/login/), which would otherwise bypass the lock."""


class SignInView(LoginView):
    """Django's sign-in page, returning status 429 while the name or address is locked.

    This includes the failure that starts a lock, so the user learns of it at once. While
    the throttle's store cannot be reached the page returns status 503 with a message.
    """

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form):
        if form.has_error("__all__", code=STORE_UNAVAILABLE):
            context = self.get_context_data(
                form=form, refusal_message=signin_throttle.STORE_UNAVAILABLE_MESSAGE
            )
            response = self.render_to_response(context, status=503)
            response["Retry-After"] = str(STORE_RETRY_AFTER_S)
            return response
        lock = _current_lock(form)
        if lock is None:
            return super().form_invalid(form)
        context = self.get_context_data(form=form, refusal_message=lock.message())
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(math.ceil(lock.remaining_s))
        return response
