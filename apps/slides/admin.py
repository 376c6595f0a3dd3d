from django.contrib import admin
from django.db import transaction

from apps.accounts import audit

from .models import Slide


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    """Slide records in the admin site. Every save and delete there writes an audit row."""

    list_display = ["id", "name", "patient_id", "section", "width_px", "height_px", "mpp", "created_at"]
    search_fields = ["name", "patient_id", "original_filename"]
    readonly_fields = ["file_path", "width_px", "height_px", "mpp", "mpp_source", "tissue_geojson"]

    @transaction.atomic
    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit.record(
            audit.Action.CHANGE if change else audit.Action.CREATE, user=request.user,
            target_type=audit.Target.SLIDE, target_id=obj.pk, slide_id=obj.pk,
            detail={"via": "admin site", "fields": sorted(form.changed_data)},
        )

    @transaction.atomic
    def delete_model(self, request, obj):
        _record_admin_delete(request, obj)
        super().delete_model(request, obj)

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        for slide in queryset:
            _record_admin_delete(request, slide)
        super().delete_queryset(request, queryset)


def _record_admin_delete(request, slide: Slide) -> None:
    audit.record(
        audit.Action.DELETE, user=request.user, target_type=audit.Target.SLIDE,
        target_id=slide.pk, slide_id=slide.pk,
        detail={
            "via": "admin site", "name": slide.name,
            "original_filename": slide.original_filename,
        },
    )
