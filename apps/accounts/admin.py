"""The admin site's accounts: its sign-in form obeys the sign-in throttle, and admins
unlock users' sign-in from the user list."""

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from . import signin_throttle
from .signin import ThrottledAdminAuthenticationForm

admin.site.login_form = ThrottledAdminAuthenticationForm


@admin.action(description="Unlock sign-in of the selected users", permissions=["change"])
def unlock_sign_in(modeladmin, request, queryset):
    """Remove the sign-in lock and failure count of each selected user."""
    try:
        unlocked = [
            user.get_username() for user in queryset
            if signin_throttle.unlock(signin_throttle.USER, user.get_username(), by=request.user)
        ]
    except signin_throttle.StoreUnavailable as exc:
        modeladmin.message_user(
            request,
            f"Nothing was unlocked: the sign-in store (Redis at REDIS_URL) is unreachable: {exc}",
            messages.ERROR,
        )
        return
    if unlocked:
        modeladmin.message_user(request, f"Unlocked sign-in of {', '.join(unlocked)}.")
    else:
        modeladmin.message_user(
            request, "None of the selected users was locked or had failed sign-ins.",
            messages.WARNING,
        )


class AccountUserAdmin(UserAdmin):
    """Django's user admin with the unlock action."""

    actions = [unlock_sign_in]


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), AccountUserAdmin)
