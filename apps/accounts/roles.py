"""Roles as Django groups, each with the model permissions its work needs.

- annotator: opens slides, runs SAM proposals, reviews (accept, reject, reopen, edit,
  draw, relabel), marks evaluation regions and reads a slide's clinical read-outs.
- pathologist: the same, plus assigning slides to reviewers, removing evaluation
  regions, exporting GeoJSON and CSV, entering pathology report values, and reading the
  dashboards and model evaluations.
- admin: everything, including importing slides and annotation files, deleting slides
  and instances, training and evaluating model versions, reading the audit log, and
  giving users their roles in the admin site.
Superusers pass every check regardless of group.
"""

from django.contrib.auth.models import Group, Permission

ANNOTATOR = "annotator"
PATHOLOGIST = "pathologist"
ADMIN = "admin"

_ANNOTATOR_PERMISSIONS = [
    "slides.view_slide",
    "annotations.view_instance",
    "annotations.view_proposalrun",
    "annotations.add_proposalrun",
    "annotations.review_instance",
    "annotations.relabel_instance",
    "annotations.view_evaluationregion",
    "annotations.add_evaluationregion",
    "analysis.view_slidereadout",
]
_PATHOLOGIST_PERMISSIONS = _ANNOTATOR_PERMISSIONS + [
    "annotations.export_instances",
    "annotations.delete_evaluationregion",
    "review.assign_reviewers",
    "analysis.view_modelevaluation",
    "analysis.enter_reports",
]

ROLE_PERMISSIONS = {
    ANNOTATOR: _ANNOTATOR_PERMISSIONS,
    PATHOLOGIST: _PATHOLOGIST_PERMISSIONS,
    ADMIN: _PATHOLOGIST_PERMISSIONS
    + [
        "slides.add_slide",
        "slides.change_slide",
        "slides.delete_slide",
        "annotations.delete_instance",
        "annotations.import_instances",
        "training.train_models",
        "analysis.evaluate_models",
        "accounts.view_auditevent",
        # Giving users their roles in the admin site (/admin/).
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.view_group",
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
