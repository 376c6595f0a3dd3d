"""Training snapshots (frozen sets of annotations) and the model versions trained on them."""

from django.conf import settings as django_settings
from django.db import models

from apps.annotations.models import Instance
from apps.slides.models import Slide


class TrainingSnapshot(models.Model):
    """The reviewed annotations of trainable classes at one moment, split by patient.

    The included instances are copied into ``SnapshotInstance`` rows with their version,
    class and geometry, so later review changes do not alter what a snapshot trains on.
    A patient is the slide's ``patient_id``, or the slide itself when that is empty.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        help_text="Snapshot this one expands (iterative dataset expansion).",
    )
    seed = models.PositiveIntegerField(default=0)
    validation_fraction = models.FloatField()
    class_names = models.JSONField(
        default=list, help_text="Trainable classes in model logit order."
    )
    class_counts = models.JSONField(default=dict, help_text="Included instances per class.")
    evaluation_region_ids = models.JSONField(default=list)
    train_patients = models.JSONField(default=list)
    validation_patients = models.JSONField(default=list)

    class Meta:
        ordering = ["-created_at", "-id"]


class SnapshotInstance(models.Model):
    """One annotation as it was when its snapshot was taken."""

    class Split(models.TextChoices):
        TRAIN = "train"
        VALIDATION = "validation"

    snapshot = models.ForeignKey(
        TrainingSnapshot, on_delete=models.CASCADE, related_name="items"
    )
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    instance_ref = models.BigIntegerField(help_text="Id of the instance, kept after deletion.")
    version = models.PositiveIntegerField()
    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="+")
    patient = models.CharField(max_length=80)
    split = models.CharField(max_length=16, choices=Split.choices)
    class_name = models.CharField(max_length=64)
    geometry = models.JSONField(help_text="GeoJSON Polygon or MultiPolygon in level-0 pixels.")
    x_min_level0 = models.FloatField()
    y_min_level0 = models.FloatField()
    x_max_level0 = models.FloatField()
    y_max_level0 = models.FloatField()

    class Meta:
        ordering = ["snapshot", "instance_ref"]
        constraints = [
            models.UniqueConstraint(
                fields=["snapshot", "instance_ref"], name="snapshot_instance_once"
            )
        ]


class ModelVersion(models.Model):
    """One fine-tuning run of a class-aware SAM on a snapshot, with its config and metrics.

    A run starts from a SAM checkpoint or from the weights of an earlier succeeded
    version (``base_version``). PROTECT keeps a base version while versions built on it exist.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    name = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    snapshot = models.ForeignKey(
        TrainingSnapshot, on_delete=models.PROTECT, related_name="model_versions"
    )
    base_version = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="continued_by",
        help_text="Succeeded model version whose weights this one starts from. Empty means "
        "a SAM checkpoint.",
    )
    base_checkpoint = models.CharField(
        max_length=1024, blank=True,
        help_text="File the run started from: a SAM checkpoint (empty uses the configured "
        "one), or the base version's weights once training starts.",
    )
    base_checkpoint_sha256 = models.CharField(max_length=64, blank=True)
    config = models.JSONField(default=dict, help_text="TrainingConfig.to_dict() of the run.")
    device_auto = models.BooleanField(
        default=False,
        help_text="The request named no device: the worker uses CUDA when it has it.",
    )
    mpp = models.FloatField(help_text="Working resolution of the training crops.")
    crop_px = models.PositiveIntegerField(help_text="Side of the training crops in working px.")
    class_names = models.JSONField(default=list)
    metrics = models.JSONField(default=list, help_text="One dict per finished epoch.")
    best_epoch = models.PositiveIntegerField(default=0)
    weights_path = models.CharField(max_length=1024, blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True)
    message = models.TextField(blank=True, help_text="Why the run failed, shown to users.")
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A lease, as on ProposalRun: a re-delivered task never trains the same version twice
    # at once, and a version whose worker died is taken over once the lease lapses.
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("train_models", "Can build training snapshots and train model versions")]
