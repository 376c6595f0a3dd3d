"""Permission checks shared by the API views and the page views."""

from rest_framework.permissions import BasePermission


def has_perm(*perms: str) -> type[BasePermission]:
    """Build a DRF permission class that requires a signed-in user holding every ``perms``."""

    class HasPerm(BasePermission):
        message = f"Your role does not allow this (needs {', '.join(perms)})."

        def has_permission(self, request, view):
            user = request.user
            return bool(user and user.is_authenticated and user.has_perms(perms))

    HasPerm.__name__ = "HasPerm_" + "_".join(p.replace(".", "_") for p in perms)
    return HasPerm
