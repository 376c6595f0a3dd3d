"""Instances on slides and the proposal runs that create them.

A proposal is an instance that no reviewer has accepted, edited or rejected yet. An
annotation is a reviewed one.
Geometry is a GeoJSON Polygon or MultiPolygon in level-0 pixels. The bounding box is kept
in indexed columns, so a viewport query tests box overlap in the database.
"""

from django.conf import settings as django_settings
from django.db import models

from apps.slides.models import Slide


class ProposalRun(models.Model):
    """One job that proposes instances on one slide, with its settings and per-stage counts.

    Without ``model_version`` it is a SAM zero-shot proposal run (unlabelled masks). With
    one it is a segmentation run of that class-aware model version, whose proposals
    carry a class and a class probability.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="proposal_runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    model_version = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
        related_name="segmentation_runs",
        help_text="Class-aware model version of a segmentation run; empty for SAM proposals.",
    )
    sam_type = models.CharField(max_length=16)
    checkpoint = models.CharField(max_length=1024, blank=True)
    checkpoint_sha256 = models.CharField(max_length=64, blank=True)
    settings = models.JSONField(default=dict)
    counts = models.JSONField(default=dict)
    predictions_file = models.CharField(
        max_length=1024, blank=True,
        help_text="GeoJSON of every prediction of a segmentation run, before the review "
        "queue's overlap filter; what read-outs and evaluations of the model measure.",
    )
    tiles_done = models.PositiveIntegerField(default=0)
    tiles_total = models.PositiveIntegerField(default=0)
    message = models.TextField(
        blank=True, help_text="Why the run failed or who cancelled it, shown to users."
    )
    cancel_requested = models.BooleanField(
        default=False, help_text="A user asked a running run to stop; its worker stops at the next tile."
    )
    cancelled_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A lease, not a flag. A worker holds the run until lease_expires_at and renews it
    # while it works, so a re-delivered task never runs the same run twice at once.
    # A run whose worker died can be taken over once the lease lapses.
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]


class ProposalRunTile(models.Model):
    """One finished tile of a run, journaled so that a run taken over skips it.

    ``payload`` is ml.tile_journal's record: the tile's instances (hex WKB outlines and
    scores) and what it added to the run's counts. ``weights_sha256`` is the checkpoint
    the tile was computed with; a run that loads other weights ignores the row. The rows
    are deleted when the run ends.
    """

    run = models.ForeignKey(ProposalRun, on_delete=models.CASCADE, related_name="journal_tiles")
    tile_index = models.PositiveIntegerField()
    weights_sha256 = models.CharField(max_length=64, blank=True)
    payload = models.JSONField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "tile_index"], name="one_journal_row_per_tile"),
        ]


class Instance(models.Model):
    """One object outline on a slide: a proposal until reviewed, then an annotation."""

    class Source(models.TextChoices):
        SAM = "sam", "SAM zero-shot proposal"
        MODEL = "model", "class-aware model prediction"
        DRAWN = "drawn", "drawn by a reviewer"
        IMPORTED = "imported", "imported from a file"

    class ReviewState(models.TextChoices):
        PENDING = "pending"
        ACCEPTED = "accepted"
        EDITED = "edited"
        REJECTED = "rejected"

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="instances")
    proposal_run = models.ForeignKey(
        ProposalRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    source = models.CharField(max_length=16, choices=Source.choices)
    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.PENDING
    )
    class_name = models.CharField(max_length=64, blank=True)
    class_confidence = models.FloatField(
        null=True, blank=True, help_text="Model probability of class_name, when a model set it."
    )
    geometry = models.JSONField(help_text="GeoJSON Polygon or MultiPolygon in level-0 pixels.")
    x_min_level0 = models.FloatField()
    y_min_level0 = models.FloatField()
    x_max_level0 = models.FloatField()
    y_max_level0 = models.FloatField()
    area_um2 = models.FloatField()
    predicted_iou = models.FloatField(null=True, blank=True)
    stability_score = models.FloatField(null=True, blank=True)
    version = models.PositiveIntegerField(
        default=1, help_text="Raised by every change; a change must name the version it saw."
    )
    reviewed_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        permissions = [
            ("review_instance", "Can accept, reject, reopen, edit and draw instances"),
            ("relabel_instance", "Can change the class of instances"),
            ("export_instances", "Can export instances as GeoJSON and CSV"),
            ("import_instances", "Can import annotation files"),
        ]
        indexes = [
            models.Index(fields=["slide", "x_min_level0", "y_min_level0"], name="instance_bbox_min"),
            models.Index(fields=["slide", "x_max_level0", "y_max_level0"], name="instance_bbox_max"),
            models.Index(fields=["slide", "review_state"], name="instance_review_state"),
        ]


class InstanceEvent(models.Model):
    """One change to an instance: who, when, what it was before and after.

    ``before`` and ``after`` hold the reviewable fields (review_state, class_name,
    geometry, version); ``before`` is empty for a creation and ``after`` for a deletion.
    The history is what users read and what undo restores from.
    """

    class Action(models.TextChoices):
        ACCEPT = "accept"
        REJECT = "reject"
        RELABEL = "relabel"
        EDIT = "edit"
        REOPEN = "reopen"
        DRAW = "draw"
        DELETE = "delete"
        IMPORT = "import"
        UNDO = "undo"

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="instance_events")
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    instance_ref = models.BigIntegerField(help_text="Id of the instance, kept after deletion.")
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    undoes = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="undone_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["slide", "user", "-id"], name="event_slide_user")]


class EvaluationRegion(models.Model):
    """A region a reviewer marked as fully reviewed: metrics score only inside such regions."""

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="evaluation_regions")
    geometry = models.JSONField(help_text="GeoJSON Polygon in level-0 pixels.")
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
