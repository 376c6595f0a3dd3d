"""Slide assignments: the reviewers each slide is given to."""

from django.conf import settings
from django.db import models

from apps.slides.models import Slide


class SlideAssignment(models.Model):
    """A slide given to a reviewer; their queue lists the slides assigned to them."""

    slide = models.ForeignKey(Slide, on_delete=models.CASCADE, related_name="assignments")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slide_assignments"
    )
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["slide", "reviewer"], name="one_assignment_per_reviewer")
        ]
        permissions = [("assign_reviewers", "Can assign slides to reviewers")]
