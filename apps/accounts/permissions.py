"""Permission checks shared by the API views and the page views."""

import functools

from django.core.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission

# Plain words for each permission, used in the message that rejects a request.
PERMISSION_WORDS = {
    "slides.view_slide": "view slides",
    "slides.add_slide": "import slides",
    "slides.delete_slide": "delete slides",
    "annotations.view_instance": "view objects",
    "annotations.view_proposalrun": "view proposal runs",
    "annotations.add_proposalrun": "run SAM proposals",
    "annotations.review_instance": "review objects",
    "annotations.relabel_instance": "change classes",
    "annotations.delete_instance": "delete objects",
    "annotations.export_instances": "export GeoJSON and CSV",
    "annotations.import_instances": "import annotation files",
    "annotations.view_evaluationregion": "view evaluation regions",
    "annotations.add_evaluationregion": "mark evaluation regions",
    "annotations.delete_evaluationregion": "remove evaluation regions",
    "review.assign_reviewers": "assign slides to reviewers",
    "training.train_models": "train models",
    "analysis.view_modelevaluation": "view model evaluations",
    "analysis.evaluate_models": "evaluate model versions",
    "analysis.view_slidereadout": "view read-outs",
    "analysis.enter_reports": "enter pathology report values",
    "accounts.view_auditevent": "read the audit log",
}


def roles_with(perms) -> list[str]:
    """Return the roles that hold every one of ``perms``, in ROLE_PERMISSIONS order."""
    from .roles import ROLE_PERMISSIONS

    return [role for role, granted in ROLE_PERMISSIONS.items() if set(perms) <= set(granted)]


def refusal_message(perms) -> str:
    """Say which right a request needs and which roles have it."""
    words = [PERMISSION_WORDS.get(p, p) for p in perms]
    needed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    roles = roles_with(perms)
    listed = roles[0] if len(roles) == 1 else f"{', '.join(roles[:-1])} or {roles[-1]}"
    holders = f"the {listed} role" if roles else "superusers only"
    return (
        f"Your role does not allow this: it needs the right to {needed}, which {holders} "
        f"{'has' if roles else 'have'}. Ask an admin to give you that role."
    )


def page_permission_required(*perms: str):
    """Decorate a page view: a signed-in user without ``perms`` gets the 403 page saying why."""

    def decorator(view):
        @functools.wraps(view)
        def checked(request, *args, **kwargs):
            if not request.user.has_perms(perms):
                raise PermissionDenied(refusal_message(perms))
            return view(request, *args, **kwargs)

        return checked

    return decorator


def has_perm(*perms: str) -> type[BasePermission]:
    """Build a DRF permission class that requires a signed-in user holding every ``perms``."""

    class HasPerm(BasePermission):
        message = refusal_message(perms)

        def has_permission(self, request, view):
            user = request.user
            return bool(user and user.is_authenticated and user.has_perms(perms))

    HasPerm.__name__ = "HasPerm_" + "_".join(p.replace(".", "_") for p in perms)
    return HasPerm
