"""Instances on slides and the proposal runs that create them.

A proposal is an instance that no reviewer has accepted, edited or rejected yet. An
annotation is a reviewed one.
Geometry is a GeoJSON Polygon in level-0 pixels; the bounding box is kept in indexed
columns so a viewport query tests box overlap in the database.
"""

from django.conf import settings as django_settings
from django.db import models

from apps.slides.models import Slide


class ProposalRun(models.Model):
    """One SAM zero-shot proposal job on one slide, with its settings and per-stage counts."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="proposal_runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    sam_type = models.CharField(max_length=16)
    checkpoint = models.CharField(max_length=1024, blank=True)
    checkpoint_sha256 = models.CharField(max_length=64, blank=True)
    settings = models.JSONField(default=dict)
    counts = models.JSONField(default=dict)
    tiles_done = models.PositiveIntegerField(default=0)
    tiles_total = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True, help_text="Why the run failed, shown to users.")
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


class Instance(models.Model):
    """One object outline on a slide: a proposal until reviewed, then an annotation."""

    class Source(models.TextChoices):
        SAM = "sam", "SAM zero-shot proposal"
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
    geometry = models.JSONField(help_text="GeoJSON Polygon in level-0 pixels.")
    x_min_level0 = models.FloatField()
    y_min_level0 = models.FloatField()
    x_max_level0 = models.FloatField()
    y_max_level0 = models.FloatField()
    area_um2 = models.FloatField()
    predicted_iou = models.FloatField(null=True, blank=True)
    stability_score = models.FloatField(null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["slide", "x_min_level0", "y_min_level0"], name="instance_bbox_min"),
            models.Index(fields=["slide", "x_max_level0", "y_max_level0"], name="instance_bbox_max"),
            models.Index(fields=["slide", "review_state"], name="instance_review_state"),
        ]
