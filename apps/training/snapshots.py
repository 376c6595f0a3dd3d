"""Training snapshots: which annotations a model trains on, and the crops cut from them.

A snapshot freezes the accepted and edited instances of trainable classes (never
"unspecified tubule", never rows without a class) with their versions and geometry, and
splits patients into train and validation. ``training_samples`` turns a snapshot into
``TrainingSample`` crops at a working mpp.

Only reviewed instances are ground truth, so unreviewed tissue is never background in a
crop. A crop's targets are the snapshot's instances overlapping it and nothing else, and
unreviewed objects in the crop are neither positive nor negative.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from django.conf import settings
from django.db import transaction
from shapely.geometry import shape

from apps.accounts import audit
from apps.annotations.models import EvaluationRegion, Instance
from ml.errors import SettingsError
from ml.training_data import TrainingSample, derive_seed

from .models import SnapshotInstance, TrainingSnapshot

logger = logging.getLogger(__name__)

TRAINED_STATES = (Instance.ReviewState.ACCEPTED, Instance.ReviewState.EDITED)
# The largest seed that TrainingSnapshot.seed (a PositiveIntegerField) stores on PostgreSQL.
MAX_SEED = 2**31 - 1


def trainable_class_names() -> list[str]:
    """Return the configured classes marked trainable, in settings order (logit order)."""
    return [spec["name"] for spec in settings.NEPHROWEB_CLASSES if spec.get("trainable", True)]


def class_colors() -> dict[str, str]:
    """Return the display colour of every configured class by name."""
    return {spec["name"]: spec["color"] for spec in settings.NEPHROWEB_CLASSES}


def patient_key(slide) -> str:
    """Return the patient key of a slide. A slide without patient_id is its own patient."""
    return f"patient:{slide.patient_id}" if slide.patient_id else f"slide:{slide.pk}"


def split_patients(
    patients: list[str], seed: int, validation_fraction: float
) -> tuple[list[str], list[str]]:
    """Split patient keys into (train, validation), the same way for the same inputs.

    The validation side gets ``round(fraction * n)`` patients, at least one when the
    fraction is above 0 and at most n - 1, so training always keeps a patient.
    """
    ordered = sorted(set(patients))
    random.Random(seed).shuffle(ordered)
    count = round(validation_fraction * len(ordered))
    if validation_fraction > 0 and len(ordered) > 1:
        count = max(count, 1)
    count = min(count, max(len(ordered) - 1, 0))
    validation = sorted(ordered[:count])
    train = sorted(ordered[count:])
    return train, validation


def build_snapshot(
    user, seed: int, validation_fraction: float, parent=None, slides=None
) -> TrainingSnapshot:
    """Freeze the current annotations of trainable classes into a new snapshot.

    Args:
        user: Who takes the snapshot (stored as created_by), or None.
        seed: Seed of the patient split, 0 to MAX_SEED.
        validation_fraction: Share of patients held out for validation, 0 to 0.9.
        parent: The snapshot this one expands, or None.
        slides: Only these slides' annotations, or None for every slide.

    Raises:
        SettingsError: ``seed`` or ``validation_fraction`` is out of range, or no
            annotation of a trainable class exists yet.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise SettingsError(f"seed is {seed!r}, expected a whole number from 0 to {MAX_SEED}.")
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) or not (
        0 <= validation_fraction <= 0.9
    ):
        raise SettingsError(
            f"validation_fraction is {validation_fraction!r}, expected a number from 0 to 0.9."
        )
    class_names = trainable_class_names()
    with transaction.atomic():
        reviewed = Instance.objects.filter(
            review_state__in=TRAINED_STATES, class_name__in=class_names
        ).exclude(class_name="")
        if slides is not None:
            reviewed = reviewed.filter(slide__in=slides)
        instances = list(reviewed.select_related("slide").order_by("id"))
        if not instances:
            raise SettingsError(
                "There are no accepted or edited annotations of a trainable class "
                f"({', '.join(class_names)}). Review some objects before taking a snapshot."
            )
        patients = {instance.slide_id: patient_key(instance.slide) for instance in instances}
        train, validation = split_patients(list(patients.values()), seed, float(validation_fraction))
        validation_set = set(validation)
        counts = {name: 0 for name in class_names}
        for instance in instances:
            counts[instance.class_name] += 1
        slide_ids = sorted(patients)
        snapshot = TrainingSnapshot.objects.create(
            created_by=user,
            parent=parent,
            seed=seed,
            validation_fraction=float(validation_fraction),
            class_names=class_names,
            class_counts=counts,
            evaluation_region_ids=list(
                EvaluationRegion.objects.filter(slide_id__in=slide_ids)
                .order_by("id").values_list("id", flat=True)
            ),
            train_patients=train,
            validation_patients=validation,
        )
        SnapshotInstance.objects.bulk_create([
            SnapshotInstance(
                snapshot=snapshot,
                instance=instance,
                instance_ref=instance.pk,
                version=instance.version,
                slide_id=instance.slide_id,
                patient=patients[instance.slide_id],
                split=(
                    SnapshotInstance.Split.VALIDATION
                    if patients[instance.slide_id] in validation_set
                    else SnapshotInstance.Split.TRAIN
                ),
                class_name=instance.class_name,
                geometry=instance.geometry,
                x_min_level0=instance.x_min_level0,
                y_min_level0=instance.y_min_level0,
                x_max_level0=instance.x_max_level0,
                y_max_level0=instance.y_max_level0,
            )
            for instance in instances
        ], batch_size=2000)
        audit.record(
            audit.Action.SNAPSHOT, user=user, target_type=audit.Target.TRAINING_SNAPSHOT,
            target_id=snapshot.pk,
            detail={"instances": len(instances), "slides": len(slide_ids), "seed": seed},
        )
    logger.info(
        "Snapshot %s: %d annotations, %d train and %d validation patients",
        snapshot.pk, len(instances), len(train), len(validation),
    )
    return snapshot


# ---------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class SnapshotSamples:
    """Training samples of one snapshot: one crop per included instance that no earlier
    crop of its slide contains whole.

    Attributes:
        train: Samples of train patients, in instance id order.
        validation: Samples of validation patients, in instance id order.
        crops_read: Crops read from slide files in this call.
        crops_cached: Crops loaded from the on-disk crop cache in this call.
        instances_in_earlier_crops: Instances that got no crop of their own because an
            earlier crop of the slide contains them whole, as one of its targets.
    """

    train: list[TrainingSample]
    validation: list[TrainingSample]
    crops_read: int
    crops_cached: int
    instances_in_earlier_crops: int = 0


def crop_cache_dir() -> Path:
    """Return the folder of cached crops, NEPHROWEB_DATA_DIR/training/crops."""
    return Path(settings.DATA_DIR) / "training" / "crops"


def crop_cache_path(instance_ref: int, version: int, mpp: float, crop_px: int) -> Path:
    """Return the cache file of one instance version's crop at ``mpp`` and ``crop_px``."""
    return crop_cache_dir() / f"instance-{instance_ref}-v{version}-mpp{mpp:g}-{crop_px}px.npz"


def crop_origin_px(
    bounds_px: tuple[float, float, float, float], crop_px: int, frame_w_px: int,
    frame_h_px: int, seed: int,
) -> tuple[int, int]:
    """Choose the top-left (x, y) working pixel of a crop that contains the object.

    ``bounds_px`` is the object's box as (x_min, y_min, x_max, y_max) in working pixels.
    The offset is uniform among crops that contain the whole box and lie inside the
    slide. An object larger than the crop is centred instead, so part of it is cut off.
    """
    rng = np.random.default_rng(seed)
    origin = []
    for low, high, frame in ((bounds_px[0], bounds_px[2], frame_w_px),
                             (bounds_px[1], bounds_px[3], frame_h_px)):
        first = max(0, int(np.ceil(high)) - crop_px)
        last = min(int(np.floor(low)), max(frame - crop_px, 0))
        if first <= last:
            origin.append(int(rng.integers(first, last + 1)))
        else:
            centred = int(round((low + high) / 2 - crop_px / 2))
            origin.append(min(max(centred, 0), max(frame - crop_px, 0)))
    return origin[0], origin[1]


def _save_crop(path: Path, image_rgb: np.ndarray, origin_px: tuple[int, int]) -> None:
    """Write a crop to the cache through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".crop-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, image_rgb=image_rgb, origin_px=np.asarray(origin_px, dtype=np.int64))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _load_crop(path: Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    try:
        with np.load(path) as data:
            origin = data["origin_px"]
            return data["image_rgb"], (int(origin[0]), int(origin[1]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError):
        logger.warning("Crop cache file %s is unreadable, so the crop is read from the slide again", path)
        return None


def rasterize(geometry_level0: dict, frame, origin_px: tuple[int, int], crop_px: int) -> np.ndarray:
    """Draw a level-0 GeoJSON (Multi)Polygon into a (crop_px, crop_px) bool mask.

    Holes are cleared. Vertices are rounded to whole pixels before cv2.fillPoly fills them.
    """
    polygon = shape(geometry_level0)
    parts = [polygon] if polygon.geom_type == "Polygon" else list(polygon.geoms)
    mask = np.zeros((crop_px, crop_px), dtype=np.uint8)

    def ring_px(ring) -> np.ndarray:
        coords = np.asarray(ring.coords, dtype=np.float64)
        x_px, y_px = frame.from_level0(coords[:, 0], coords[:, 1])
        points = np.stack([x_px - origin_px[0], y_px - origin_px[1]], axis=1)
        return np.round(points).astype(np.int32)

    for part in parts:
        cv2.fillPoly(mask, [ring_px(part.exterior)], 1)
        holes = [ring_px(ring) for ring in part.interiors]
        if holes:
            cv2.fillPoly(mask, holes, 0)
    return mask.astype(bool)


def training_samples(snapshot: TrainingSnapshot, mpp: float, crop_px: int) -> SnapshotSamples:
    """Cut one crop per included instance and make its ``TrainingSample``.

    Each crop is ``crop_px`` square at ``mpp`` and contains its instance. Its targets are
    every snapshot instance of the same slide that overlaps the crop, clipped to it, with
    class indices in ``snapshot.class_names`` order. Crops come from the cache when the
    same instance version was cut before at the same mpp and size, which a child
    snapshot does for every instance its parent had.

    The crop offset is drawn from a generator seeded by the instance id and version, not
    the snapshot's seed, so every snapshot cuts the same crop and the cache stays valid.

    Raises:
        SlideError: A slide file cannot be opened or read at ``mpp``.
    """
    from ml.slide import open_slide

    class_index = {name: index for index, name in enumerate(snapshot.class_names)}
    items_by_slide = defaultdict(list)
    for item in snapshot.items.select_related("slide").order_by("instance_ref"):
        items_by_slide[item.slide_id].append(item)

    samples: dict[int, tuple[str, TrainingSample]] = {}
    crops_read = crops_cached = in_earlier_crops = 0
    for items in items_by_slide.values():
        slide = items[0].slide
        given_mpp = slide.mpp if slide.mpp_source == "given" else None
        with open_slide(slide.file_path, mpp=given_mpp) as slide_file:
            frame = slide_file.working_frame(mpp)
            # Level-0 boxes of this slide's crops so far. On densely annotated tissue one
            # crop per instance would repeat each neighbour as a target in many crops.
            crop_boxes_level0: list[tuple[float, float, float, float]] = []
            for item in items:
                if any(
                    x0 <= item.x_min_level0 and y0 <= item.y_min_level0
                    and item.x_max_level0 <= x1 and item.y_max_level0 <= y1
                    for x0, y0, x1, y1 in crop_boxes_level0
                ):
                    in_earlier_crops += 1
                    continue
                path = crop_cache_path(item.instance_ref, item.version, mpp, crop_px)
                cached = _load_crop(path)
                if cached is not None:
                    image_rgb, origin_px = cached
                    crops_cached += 1
                else:
                    x_min, y_min = frame.from_level0(item.x_min_level0, item.y_min_level0)
                    x_max, y_max = frame.from_level0(item.x_max_level0, item.y_max_level0)
                    origin_px = crop_origin_px(
                        (x_min, y_min, x_max, y_max), crop_px, frame.width_px, frame.height_px,
                        derive_seed(item.instance_ref, item.version),
                    )
                    image_rgb = frame.read(slide_file, origin_px[0], origin_px[1], crop_px, crop_px)
                    _save_crop(path, image_rgb, origin_px)
                    crops_read += 1
                sample = _sample_for(item, items, frame, origin_px, crop_px, image_rgb, class_index)
                if sample is not None:
                    samples[item.instance_ref] = (item.split, sample)
                    x0, y0 = frame.to_level0(origin_px[0], origin_px[1])
                    x1, y1 = frame.to_level0(origin_px[0] + crop_px, origin_px[1] + crop_px)
                    crop_boxes_level0.append((x0, y0, x1, y1))

    train = [s for ref, (split, s) in sorted(samples.items()) if split == SnapshotInstance.Split.TRAIN]
    validation = [
        s for ref, (split, s) in sorted(samples.items())
        if split == SnapshotInstance.Split.VALIDATION
    ]
    logger.info(
        "Snapshot %s at %g mpp, %d px crops: %d train and %d validation samples "
        "(%d crops read from slides, %d from the cache, %d instances only in other crops)",
        snapshot.pk, mpp, crop_px, len(train), len(validation), crops_read, crops_cached,
        in_earlier_crops,
    )
    return SnapshotSamples(train, validation, crops_read, crops_cached, in_earlier_crops)


def _sample_for(item, slide_items, frame, origin_px, crop_px, image_rgb, class_index):
    """Build the sample of ``item``'s crop, or None when the item has no pixel in it."""
    scale = frame.scale_level0_per_px
    crop_x0_level0, crop_y0_level0 = frame.to_level0(origin_px[0], origin_px[1])
    crop_x1_level0 = crop_x0_level0 + crop_px * scale
    crop_y1_level0 = crop_y0_level0 + crop_px * scale
    masks, classes = [], []
    own_has_pixels = False
    for other in slide_items:
        if (other.x_max_level0 < crop_x0_level0 or other.x_min_level0 > crop_x1_level0
                or other.y_max_level0 < crop_y0_level0 or other.y_min_level0 > crop_y1_level0):
            continue
        mask = rasterize(other.geometry, frame, origin_px, crop_px)
        if not mask.any():
            continue
        own_has_pixels |= other.pk == item.pk
        masks.append(mask)
        classes.append(class_index[other.class_name])
    if not own_has_pixels:
        logger.warning(
            "Instance %s has no pixel at %g mpp, so it is left out of training", item.instance_ref,
            frame.mpp,
        )
        return None
    return TrainingSample(
        image_rgb=np.ascontiguousarray(image_rgb, dtype=np.uint8),
        instance_masks=np.stack(masks),
        class_indices=np.asarray(classes, dtype=np.int64),
    )
