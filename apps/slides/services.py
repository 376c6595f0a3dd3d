"""Slide import: open and check the file with ``ml``, detect tissue, create the record."""

import logging
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils.text import get_valid_filename
from shapely.geometry import mapping

from apps.accounts import audit
from ml.errors import SlideError
from ml.slide import open_slide
from ml.tissue import detect_tissue

from .models import Slide

logger = logging.getLogger(__name__)

# Suffixes accepted for upload; the content is checked by opening the file, not by name.
# MIRAX (.mrxs) and other multi-file formats need their folder, so they are imported
# from a server path with the import_slides command instead of uploaded.
UPLOAD_SUFFIXES = {
    ".svs", ".ndpi", ".scn", ".bif", ".tif", ".tiff", ".dcm", ".svslide",
    ".png", ".jpg", ".jpeg",
}


# The largest section number that Slide.section (a PositiveIntegerField) stores on PostgreSQL.
MAX_SECTION = 2**31 - 1


def validate_metadata(*, section=None, report_ifta_pct=None, mpp=None):
    """Raise SlideError naming the field when a value is out of range."""
    if section is not None and (not isinstance(section, int) or not 0 <= section <= MAX_SECTION):
        raise SlideError(
            f"section must be a whole number from 0 to {MAX_SECTION}, got {section!r}."
        )
    if report_ifta_pct is not None and not 0.0 <= float(report_ifta_pct) <= 100.0:
        raise SlideError(f"report_ifta_pct must lie between 0 and 100, got {report_ifta_pct!r}.")
    if mpp is not None and not float(mpp) > 0:
        raise SlideError(f"mpp must be a positive number of microns per pixel, got {mpp!r}.")


def import_slide(
    path,
    *,
    mpp=None,
    patient_id="",
    section=None,
    report_ifta_pct=None,
    cohort="",
    origin=Slide.Origin.IMPORT,
    name=None,
    original_filename=None,
    user=None,
) -> Slide:
    """Open ``path``, detect its tissue and create a Slide; raise SlideError if it is unusable."""
    validate_metadata(section=section, report_ifta_pct=report_ifta_pct, mpp=mpp)
    path = Path(path).resolve()
    with open_slide(path, mpp=mpp) as slide:
        info = slide.info
        tissue = detect_tissue(slide)
    bounds_x, bounds_y, bounds_w, bounds_h = info.bounds_level0
    with transaction.atomic():
        record = Slide.objects.create(
            name=name or path.stem,
            file_path=str(path),
            original_filename=original_filename or path.name,
            origin=origin,
            vendor=info.vendor,
            width_px=info.width_px,
            height_px=info.height_px,
            mpp=info.mpp,
            mpp_source=info.mpp_source,
            bounds_x_level0=bounds_x,
            bounds_y_level0=bounds_y,
            bounds_w_level0=bounds_w,
            bounds_h_level0=bounds_h,
            cohort=cohort or "",
            patient_id=patient_id or "",
            section=section,
            report_ifta_pct=report_ifta_pct,
            tissue_geojson=mapping(tissue.polygons_level0),
            tissue_area_um2=tissue.area_um2,
            warnings=list(tissue.warnings),
            created_by=user,
        )
        audit.record(
            audit.Action.UPLOAD if origin == Slide.Origin.UPLOAD else audit.Action.IMPORT,
            user=user, target_type=audit.Target.SLIDE, target_id=record.pk, slide_id=record.pk,
            detail={"name": record.name, "original_filename": record.original_filename},
        )
    logger.info(
        "Imported slide %s from %s: %dx%d px at %.4f mpp (%s)",
        record.pk, path, info.width_px, info.height_px, info.mpp, info.mpp_source,
    )
    return record


def store_upload(uploaded_file, *, user=None, **metadata) -> Slide:
    """Store an uploaded file under a generated folder and import it.

    The file keeps a sanitised version of its name (OpenSlide picks the reader by suffix)
    inside a new random folder, so a new upload never replaces an existing path. On any
    error the folder is removed: nothing half-created is left behind.
    """
    original_name = Path(uploaded_file.name or "").name
    suffix = Path(original_name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        allowed = ", ".join(sorted(UPLOAD_SUFFIXES))
        raise SlideError(
            f"{original_name or 'The upload'}: file type {suffix or '(none)'} is not accepted; "
            f"upload one of {allowed}. MIRAX (.mrxs) slides are imported with "
            "'manage.py import_slides PATH'."
        )
    limit_bytes = settings.NEPHROWEB_MAX_UPLOAD_MB * 1024 * 1024
    if uploaded_file.size > limit_bytes:
        raise SlideError(
            f"{original_name}: {uploaded_file.size / 2**20:.0f} MB exceeds the upload limit of "
            f"{settings.NEPHROWEB_MAX_UPLOAD_MB} MB (NEPHROWEB_MAX_UPLOAD_MB)."
        )
    folder = Path(settings.MEDIA_ROOT) / "slides" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    target = folder / (get_valid_filename(Path(original_name).stem)[:100] + suffix)
    try:
        with open(target, "wb") as out:
            for chunk in uploaded_file.chunks():
                out.write(chunk)
        return import_slide(
            target,
            origin=Slide.Origin.UPLOAD,
            name=metadata.pop("name", None) or Path(original_name).stem,
            original_filename=original_name,
            user=user,
            **metadata,
        )
    except SlideError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        # Name the user's file, not the generated storage path.
        raise SlideError(str(exc).replace(str(target.resolve()), original_name)) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def delete_slide(slide, *, user=None) -> None:
    """Delete a slide record with its instances and runs; remove the file only if uploaded.

    Imported slides stay where they were on the server: the record pointed at them, it
    did not own them.
    """
    uploaded_folder = None
    if slide.origin == Slide.Origin.UPLOAD:
        candidate = Path(slide.file_path).parent
        media_slides = (Path(settings.MEDIA_ROOT) / "slides").resolve()
        if candidate.resolve().parent == media_slides:
            uploaded_folder = candidate
    slide_id = slide.pk
    with transaction.atomic():
        audit.record(
            audit.Action.DELETE, user=user, target_type=audit.Target.SLIDE, target_id=slide_id,
            slide_id=slide_id,
            detail={"name": slide.name, "original_filename": slide.original_filename},
        )
        slide.delete()
    if uploaded_folder is not None:
        shutil.rmtree(uploaded_folder, ignore_errors=True)
    logger.info("Deleted slide %s (by %s)", slide_id, user)
