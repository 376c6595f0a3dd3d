"""Tile datasets (image + binary mask per class, the KI layout) imported as slides.

Each (stain, scale index) group of a dataset becomes one mosaic slide (``ml.tile_mosaic``)
written into the data folder, and each instance of its tiles becomes an accepted
annotation with source "imported". Public data can then seed a model like annotations
reviewed in the browser. A slide and its instances are created in one transaction.

The mosaic's file name carries a digest of its pixels, tiles and instances. A second
import of the same dataset with the same settings finds the slide by that path and
creates nothing. A changed dataset or class map gives a new file and a new slide, and the
file of an earlier import is never overwritten (tile caches key on the path).

NOTE: a KI tile has a mask for one class only, so other structures in it stay
unannotated. Training uses only reviewed objects and is not misled, but a metric over a
whole mosaic would count correct predictions of those structures as false positives.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from apps.slides.models import Slide
from apps.slides.services import import_slide
from ml.tile_dataset import (
    DEFAULT_KI_CLASS_MAP,
    SkippedFolder,
    TileDatasetError,
    read_tile_dataset,
)
from ml.tile_mosaic import (
    DEFAULT_GUTTER_PX,
    MosaicLayout,
    compose_mosaic,
    group_samples,
    write_tile_mosaic,
)

from .classes import configured_classes
from .geometry import instance_row
from .models import Instance, InstanceEvent

logger = logging.getLogger(__name__)

PATIENT_ID_MAX_CHARS = Slide._meta.get_field("patient_id").max_length
DIGEST_CHARS_IN_NAME = 12


@dataclass(frozen=True)
class TileSlideResult:
    """One mosaic slide of an import.

    Attributes:
        slide: The Slide row, new or found.
        created: False when the slide existed from an earlier import.
        tile_count: Dataset tiles in the mosaic.
        instances_per_class: Imported instances per class, sorted by class name. For a
            slide found from an earlier import, those still stored with source "imported".
        mpp_is_estimate: True when the mpp was estimated from the scale index.
    """

    slide: Slide
    created: bool
    tile_count: int
    instances_per_class: dict[str, int]
    mpp_is_estimate: bool


@dataclass
class TileDatasetImport:
    """Outcome of an import: one result per mosaic, and the folders and files left out."""

    root: Path
    slides: list[TileSlideResult] = field(default_factory=list)
    skipped_folders: tuple[SkippedFolder, ...] = ()
    unpaired_files: tuple[Path, ...] = ()


def default_output_dir(root: Path) -> Path:
    """Return the folder for a dataset's mosaics, NEPHROWEB_DATA_DIR/tile_datasets/<name>."""
    return Path(settings.DATA_DIR) / "tile_datasets" / root.name


def import_tile_dataset(
    root: str | Path,
    *,
    stains: Iterable[str] | None = None,
    output_dir: str | Path | None = None,
    patient_prefix: str = "",
    user=None,
    class_map: Mapping[str, str | None] = DEFAULT_KI_CLASS_MAP,
    gutter_px: int = DEFAULT_GUTTER_PX,
) -> TileDatasetImport:
    """Write one mosaic slide per (stain, scale index) group and import its annotations.

    Every mosaic of the dataset gets the patient id ``patient_prefix + <folder name>``.
    The KI file names carry no patient, and a source image may appear in several stains,
    so one patient per dataset keeps a patient split of training data from putting the
    same tissue on both sides.

    Args:
        root: The dataset folder, with ``<k>_<s>_<name>/<stain>/`` class folders.
        stains: Stain folders to import, or None for all.
        output_dir: Folder for the mosaics, or None for ``default_output_dir``.
        patient_prefix: Text put before the folder name to form the patient id.
        user: Who imports, stored as reviewer and on the IMPORT events, or None.
        class_map: Class folder name part -> product class, or None to skip the folder.
        gutter_px: Glass between tiles in the mosaic, in pixels.

    Raises:
        TileDatasetError: The folder cannot be read as a tile dataset, contains no
            image/mask pair of the requested stains, maps a folder to a class that is
            not configured, or the patient id is too long.
        SlideError: A written mosaic cannot be opened as a slide.
    """
    root = Path(root).resolve()
    dataset = read_tile_dataset(root, class_map=class_map, stains=stains)
    if not dataset.samples:
        stain_text = f" of stain {', '.join(sorted(stains))}" if stains else ""
        unpaired_text = ""
        unpaired_count = len(dataset.unpaired_files)
        if unpaired_count:
            files_have = "1 file has" if unpaired_count == 1 else f"{unpaired_count} files have"
            unpaired_text = (
                f" {files_have} no partner image or mask, for example "
                f"{dataset.unpaired_files[0]}."
            )
        raise TileDatasetError(
            f"Tile dataset folder {root} has no image/mask pair{stain_text} in a class folder "
            f"that the class map keeps.{unpaired_text} Check the folder and the --stain option."
        )
    _check_classes_configured(dataset.samples)
    patient_id = f"{patient_prefix}{root.name}"
    if len(patient_id) > PATIENT_ID_MAX_CHARS:
        raise TileDatasetError(
            f"Patient id {patient_id!r} of tile dataset folder {root} has {len(patient_id)} "
            f"characters, more than the {PATIENT_ID_MAX_CHARS} allowed. Use a shorter "
            "--patient-prefix."
        )
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(root)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TileDatasetError(
            f"Output folder {output_dir} for the mosaics cannot be created "
            f"({exc.strerror or exc}). Pass a folder, not a file, as --output-dir."
        ) from exc

    result = TileDatasetImport(
        root=root,
        skipped_folders=dataset.skipped_folders,
        unpaired_files=dataset.unpaired_files,
    )
    for group, samples in group_samples(dataset.samples).items():
        layout = compose_mosaic(samples, gutter_px=gutter_px)
        stem = (
            f"{root.name}_{group.stain}_scale{group.scale_index}_"
            f"{layout.content_digest()[:DIGEST_CHARS_IN_NAME]}"
        )
        path = (output_dir / f"{stem}.tiff").resolve()
        result.slides.append(
            _import_mosaic(layout, path, root=root, patient_id=patient_id, user=user)
        )
    return result


def _lock_path(path: Path) -> None:
    """Hold a transaction-scoped lock on ``path`` so concurrent imports create one slide.

    Slide.file_path is not unique, so the existence check needs the lock. PostgreSQL gets
    an advisory lock keyed by the path. SQLite needs none because the project opens its
    transactions in IMMEDIATE mode, which already serialises writers.
    """
    if connection.vendor != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(str(path).encode("utf-8")).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _check_classes_configured(samples) -> None:
    """Raise TileDatasetError naming a class folder whose class is not configured."""
    configured = {instance_class.name for instance_class in configured_classes()}
    unknown = sorted(
        {(sample.class_name, sample.image_path.parent.parent.name) for sample in samples
         if sample.class_name not in configured}
    )
    if unknown:
        listed = ", ".join(f"{class_name!r} (folder {folder})" for class_name, folder in unknown)
        raise TileDatasetError(
            f"The class map sends tile folders to classes that are not configured: {listed}. "
            f"Configured classes: {', '.join(sorted(configured))}. Nothing was imported."
        )


def _import_mosaic(
    layout: MosaicLayout, path: Path, *, root: Path, patient_id: str, user
) -> TileSlideResult:
    """Create the slide of one mosaic with its annotations, unless it exists already."""
    # The digest is in the name, so an existing file has this content and stays as it is.
    if not path.exists():
        write_tile_mosaic(layout, path)
    group = layout.group
    now = timezone.now()
    with transaction.atomic():
        _lock_path(path)
        existing = Slide.objects.filter(file_path=str(path)).order_by("id").first()
        if existing is not None:
            logger.info(
                "Tile mosaic %s was imported before as slide %s, so nothing was imported.",
                path, existing.pk,
            )
            stored = (
                Instance.objects.filter(slide=existing, source=Instance.Source.IMPORTED)
                .values_list("class_name")
                .annotate(count=Count("id"))
                .order_by("class_name")
            )
            return TileSlideResult(
                existing, False, len(layout.tiles), dict(stored), layout.mpp_is_estimate
            )

        slide = import_slide(
            path,
            mpp=layout.mpp,
            patient_id=patient_id,
            name=f"{root.name} {group.stain} scale {group.scale_index}",
            user=user,
        )
        if layout.mpp_is_estimate:
            slide.warnings = [
                *slide.warnings,
                f"The pixel size {layout.mpp:g} µm/px is an estimate from the tile dataset's "
                f"scale index {group.scale_index}; the tiles record no pixel size.",
            ]
            slide.save(update_fields=["warnings"])
        rows = [
            instance_row(
                instance.polygon_level0,
                slide=slide,
                mpp=slide.mpp,
                source=Instance.Source.IMPORTED,
                review_state=Instance.ReviewState.ACCEPTED,
                class_name=instance.class_name,
                reviewed_by=user,
                reviewed_at=now,
            )
            for instance in layout.instances
        ]
        Instance.objects.bulk_create(rows, batch_size=2000)
        InstanceEvent.objects.bulk_create(
            [
                InstanceEvent(
                    slide=slide,
                    instance=row,
                    instance_ref=row.pk,
                    user=user,
                    action=InstanceEvent.Action.IMPORT,
                    before={},
                    after={
                        "review_state": row.review_state,
                        "class_name": row.class_name,
                        "geometry": row.geometry,
                        "version": row.version,
                    },
                )
                for row in rows
            ],
            batch_size=2000,
        )
    instances_per_class = dict(sorted(Counter(row.class_name for row in rows).items()))
    logger.info(
        "Imported tile mosaic %s as slide %s with %d annotations %s",
        path, slide.pk, len(rows), instances_per_class,
    )
    return TileSlideResult(
        slide, True, len(layout.tiles), instances_per_class, layout.mpp_is_estimate
    )
