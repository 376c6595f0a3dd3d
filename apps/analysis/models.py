"""Stored measurements: clinical read-outs per slide, model evaluations, pathology reports.

Read-outs and evaluations are derived data. Each row keeps ``inputs_key``, a digest of
what it was computed from (reviewed instances, predictions file, settings), so a reader
can tell a stale row from a current one and recompute it.
"""

from django.conf import settings as django_settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from apps.annotations.models import ProposalRun
from apps.slides.models import Slide


class SlideReadout(models.Model):
    """Counts, densities, IFTA, glomerulosclerosis and Banff ci/ct of one slide from one source.

    ``source`` names whose outlines were measured: the reviewed annotations, one model
    version's predictions, or both (reviewed annotations where they exist, the model's
    predictions elsewhere).
    """

    class Source(models.TextChoices):
        REVIEWED = "reviewed", "reviewed annotations"
        MODEL = "model", "model predictions"
        COMBINED = "combined", "reviewed annotations, model predictions elsewhere"

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="readouts")
    source = models.CharField(max_length=16, choices=Source.choices)
    model_version = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.CASCADE,
        related_name="readouts", help_text="Empty for the reviewed source.",
    )
    proposal_run = models.ForeignKey(
        ProposalRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Segmentation run whose predictions were measured.",
    )
    inputs_key = models.CharField(max_length=64, help_text="Digest of the inputs used.")
    counts = models.JSONField(default=dict, help_text="Instances per class name.")
    densities_per_mm2 = models.JSONField(default=dict, help_text="Instances per mm² of cortex.")
    cortex_source = models.CharField(
        max_length=32, blank=True, help_text='"cortex annotation" or "tissue mask".'
    )
    cortex_area_um2 = models.FloatField(default=0.0)
    ifta_pct = models.FloatField(null=True, blank=True)
    ifta_area_um2 = models.FloatField(default=0.0)
    ifta_regions = models.JSONField(
        default=dict, blank=True, help_text="GeoJSON MultiPolygon in level-0 pixels."
    )
    ifta_clusters = models.JSONField(default=list, blank=True)
    glomeruli_count = models.PositiveIntegerField(default=0)
    sclerotic_count = models.PositiveIntegerField(default=0)
    glomerulosclerosis_pct = models.FloatField(null=True, blank=True)
    banff_ci = models.PositiveSmallIntegerField(null=True, blank=True)
    banff_ct = models.PositiveSmallIntegerField(null=True, blank=True)
    settings = models.JSONField(default=dict, help_text="IFTA settings used.")
    message = models.TextField(blank=True, help_text="Why a value is missing, for users.")
    computed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slide_id", "source", "model_version_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["slide", "source"], condition=models.Q(model_version__isnull=True),
                name="readout_unique_without_model",
            ),
            models.UniqueConstraint(
                fields=["slide", "source", "model_version"],
                condition=models.Q(model_version__isnull=False),
                name="readout_unique_with_model",
            ),
        ]


class ModelEvaluation(models.Model):
    """Per-class COCO metrics of one model version against reviewed annotations.

    Scored inside the evaluation regions of the slides listed in ``slides``, from the
    stored predictions of each slide's latest succeeded segmentation run of the version.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    model_version = models.ForeignKey(
        "training.ModelVersion", on_delete=models.CASCADE, related_name="evaluations"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    inputs_key = models.CharField(max_length=64, blank=True)
    slides = models.JSONField(
        default=list, help_text="Per slide: id, name, run id, truth and prediction counts."
    )
    metrics = models.JSONField(default=dict, help_text="EvaluationResult.to_dict().")
    message = models.TextField(blank=True)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The lease of the worker computing it (nephroweb/leases.py), so that two deliveries
    # of its task never compute at once.
    lease_owner = models.CharField(max_length=128, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("evaluate_models", "Can evaluate model versions")]


class PatientReport(models.Model):
    """The IFTA % a pathology report gives for a whole patient (all sections together).

    A report per section is ``Slide.report_ifta_pct``. When a patient has both, the
    patient report is the reported value.
    """

    cohort = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField(max_length=64)
    report_ifta_pct = models.FloatField(
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)]
    )
    updated_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cohort", "patient_id"]
        constraints = [
            models.UniqueConstraint(fields=["cohort", "patient_id"], name="one_report_per_patient")
        ]
        permissions = [("enter_reports", "Can enter and import pathology report values")]
