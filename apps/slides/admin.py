from django.contrib import admin

from .models import Slide


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "patient_id", "section", "width_px", "height_px", "mpp", "created_at"]
    search_fields = ["name", "patient_id", "original_filename"]
    readonly_fields = ["file_path", "width_px", "height_px", "mpp", "mpp_source", "tissue_geojson"]
