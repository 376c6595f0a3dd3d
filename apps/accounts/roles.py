"""Roles as Django groups, each with the model permissions its work needs.

- annotator: opens slides, runs SAM proposals, exports annotations.
- pathologist: the same (review permissions arrive with the review queue).
- admin: also imports, changes and deletes slides and deletes instances.
Superusers pass every check regardless of group.
"""

from django.contrib.auth.models import Group, Permission

ANNOTATOR = "annotator"
PATHOLOGIST = "pathologist"
ADMIN = "admin"

_VIEW_AND_PROPOSE = [
    "slides.view_slide",
    "annotations.view_instance",
    "annotations.view_proposalrun",
    "annotations.add_proposalrun",
]

ROLE_PERMISSIONS = {
    ANNOTATOR: _VIEW_AND_PROPOSE,
    PATHOLOGIST: _VIEW_AND_PROPOSE,
    ADMIN: _VIEW_AND_PROPOSE
    + [
        "slides.add_slide",
        "slides.change_slide",
        "slides.delete_slide",
        "annotations.delete_instance",
    ],
}


def ensure_roles(**kwargs):
    """Create the role groups and give each exactly its permissions (post_migrate hook)."""
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        permissions = []
        for dotted in codenames:
            app_label, codename = dotted.split(".")
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is not None:
                permissions.append(permission)
        group.permissions.set(permissions)
