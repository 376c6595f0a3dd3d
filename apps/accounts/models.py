"""Accounts keep Django's User, and roles are groups (see roles.py).

``AuditEvent`` is the audit log: who viewed, changed, exported or trained what. Rows are
written only by ``apps.accounts.audit.record`` and are append-only (see docs/audit.md).
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class AuditLogAppendOnlyError(Exception):
    """Raised on any attempt to change or delete a row of the audit log."""


class AuditEventQuerySet(models.QuerySet):
    """Querysets of the audit log: reading and inserting work, updates and deletes raise."""

    def update(self, **kwargs):
        raise AuditLogAppendOnlyError("Audit events are append-only, so they cannot be updated.")

    def delete(self):
        raise AuditLogAppendOnlyError("Audit events are append-only, so they cannot be deleted.")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AuditLogAppendOnlyError("Audit events are append-only, so they cannot be updated.")


class AuditEvent(models.Model):
    """One audited action: who did it, what kind, on which target, from where and when.

    ``user`` becomes NULL when the user is deleted, but ``username`` keeps the name. An
    empty ``username`` with no user means the command line or a worker, except for
    ``login_failed`` and ``login_locked``, where ``username`` is the name that was typed.
    """

    class Action(models.TextChoices):
        VIEW = "view", "viewed"
        CREATE = "create", "created"
        CHANGE = "change", "changed"
        DELETE = "delete", "deleted"
        EXPORT = "export", "exported"
        IMPORT = "import", "imported"
        UPLOAD = "upload", "uploaded"
        PROPOSE = "propose", "started SAM proposals"
        SEGMENT = "segment", "started a segmentation run"
        SNAPSHOT = "snapshot", "took a training snapshot"
        TRAIN = "train", "started training"
        CANCEL = "cancel", "cancelled a run or training"
        EVALUATE = "evaluate", "started an evaluation"
        LOGIN = "login", "signed in"
        LOGIN_FAILED = "login_failed", "failed to sign in"
        LOGIN_LOCKED = "login_locked", "was locked out after failed sign-ins"
        LOGIN_UNLOCKED = "login_unlocked", "unlocked sign-in"
        LOGOUT = "logout", "signed out"

    class Target(models.TextChoices):
        SLIDE = "slide"
        INSTANCE = "instance"
        EVALUATION_REGION = "evaluation_region"
        SLIDE_ASSIGNMENT = "slide_assignment"
        PROPOSAL_RUN = "proposal_run"
        TRAINING_SNAPSHOT = "training_snapshot"
        MODEL_VERSION = "model_version"
        MODEL_EVALUATION = "model_evaluation"
        PATIENT_REPORT = "patient_report"
        REPORT_FILE = "report_file"
        COHORT = "cohort"
        USER = "user"
        CLIENT_ADDRESS = "client_address"
        AUDIT_LOG = "audit_log"

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    target_type = models.CharField(max_length=32, choices=Target.choices)
    target_id = models.BigIntegerField(null=True, blank=True)
    # A plain number, not a foreign key: the row outlives the slide it names.
    slide_id = models.BigIntegerField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # Reading is the only permission, because rows are added by audit.record alone
        # and are never changed or deleted.
        default_permissions = ("view",)
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="audit_created_idx"),
            models.Index(fields=["target_type", "target_id"], name="audit_target_idx"),
            models.Index(fields=["slide_id", "-created_at"], name="audit_slide_idx"),
            models.Index(fields=["username", "-created_at"], name="audit_username_idx"),
        ]

    def __str__(self):
        actor = self.username or "(command line or worker)"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {actor} {self.action} {self.target_label}"

    @property
    def user_deleted(self) -> bool:
        """Whether the acting user's account was deleted since.

        Sign-in failures and locks store the typed name without a user, so a NULL user
        there says nothing about the account.
        """
        typed_name_actions = (self.Action.LOGIN_FAILED, self.Action.LOGIN_LOCKED)
        if not self.username or self.user_id is not None:
            return False
        return self.action not in typed_name_actions

    @property
    def target_label(self) -> str:
        """Return the target as text, e.g. ``slide 12``, or only its type when it has no id."""
        if self.target_id is None:
            return self.target_type
        return f"{self.target_type} {self.target_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditLogAppendOnlyError(
                f"Audit event {self.pk} is append-only, so it cannot be changed."
            )
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditLogAppendOnlyError(
            f"Audit event {self.pk} is append-only, so it cannot be deleted."
        )
