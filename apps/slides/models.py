"""The Slide record: one whole-slide image file and what analysis needs to know of it."""

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class Slide(models.Model):
    """A whole-slide image. Sizes and bounds are in level-0 pixels; ``mpp`` is µm per
    level-0 pixel. The file is never overwritten in place (tile caches key on its path)."""

    class Origin(models.TextChoices):
        UPLOAD = "upload", "uploaded in the browser or API"
        IMPORT = "import", "imported from a path on the server"
        SAMPLE = "sample", "generated sample slide"

    name = models.CharField(max_length=255)
    file_path = models.CharField(max_length=1024, help_text="Absolute path of the slide file.")
    original_filename = models.CharField(max_length=255)
    origin = models.CharField(max_length=16, choices=Origin.choices)
    vendor = models.CharField(max_length=64, blank=True)
    width_px = models.PositiveIntegerField(help_text="Level-0 width in pixels.")
    height_px = models.PositiveIntegerField(help_text="Level-0 height in pixels.")
    mpp = models.FloatField(help_text="Microns per level-0 pixel.")
    mpp_source = models.CharField(max_length=64)
    bounds_x_level0 = models.IntegerField(default=0)
    bounds_y_level0 = models.IntegerField(default=0)
    bounds_w_level0 = models.PositiveIntegerField()
    bounds_h_level0 = models.PositiveIntegerField()
    cohort = models.CharField(
        max_length=64, blank=True, help_text="Study or cohort the slide belongs to."
    )
    patient_id = models.CharField(max_length=64, blank=True)
    section = models.PositiveIntegerField(null=True, blank=True)
    report_ifta_pct = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(100.0)],
        help_text="IFTA % stated in the pathology report.",
    )
    tissue_geojson = models.JSONField(
        default=dict, help_text="Tissue mask as a GeoJSON MultiPolygon in level-0 pixels."
    )
    tissue_area_um2 = models.FloatField(default=0.0)
    warnings = models.JSONField(
        default=list, blank=True, help_text="Sentences for users about doubts found on import."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} (#{self.pk})"
