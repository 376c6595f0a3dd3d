"""Whole-slide instance segmentation with a class-aware SAM: tiles, prompt grid, filters, merge.

Pipeline of :func:`segment_slide`, each step counted in ``SegmentationResult.counts``:

1. Cut the slide's working frame (``settings.mpp``) into the same overlapping tiles as
   :func:`ml.proposals.propose`, and skip tiles whose tissue fraction is below
   ``min_tile_tissue_fraction`` without running the image encoder on them.
2. Resize each tile to the model input (S x S) and prompt it with a regular grid of
   ``points_per_side``² single foreground points, ``points_per_batch`` prompts per decoder
   call. Each prompt yields one mask, one predicted IoU and one class distribution.
3. Drop a prediction whose predicted IoU is below ``min_predicted_iou``, whose most
   probable class is ``background_class``, or whose class probability is below
   ``min_class_probability``. Then apply the size filters of the proposals.
4. Remove duplicates within the tile by greedy box NMS on the masks' xyxy boxes
   (``torchvision.ops.nms``, scored by predicted IoU, class-agnostic, threshold
   ``duplicate_box_iou``). One object hit by several grid points gives one mask per point.
5. Trace each survivor's largest component into a level-0 polygon with its holes, and
   drop it when less than ``min_mask_tissue_fraction`` of it lies in tissue.
6. Merge across tiles with :func:`ml.merge.merge_instances`. A kept instance keeps its
   own class, so the class never comes from the instance it replaced.

Usage::

    loaded = load_class_aware(weights_path)
    with open_slide(path) as slide:
        result = segment_slide(slide, loaded, SegmentationSettings(), detect_tissue(slide))
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import shapely
import shapely.affinity
import torch
import torch.nn.functional as F
import torchvision
from shapely.geometry import Polygon

from ml.class_aware import ClassAwarePrediction, ClassAwareSam
from ml.errors import SettingsError
from ml.instances import Instance
from ml.merge import merge_instances
from ml.model_files import LoadedClassAwareSam
from ml.polygons import (
    largest_component_polygon,
    make_valid_polygons,
    polygon_px_to_level0,
    sort_polygons,
)

# The tile tissue rules must match the proposals exactly, so they are shared, not copied.
from ml.proposals import _image_size_in_tile, _tile_tissue_fraction
from ml.slide import MPP_MAX, MPP_MIN, Slide, WorkingFrame
from ml.tiling import Tile, overlap_for_max_area, tile_grid
from ml.tissue import TissueMask

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every tile, skipped ones included."""

StopCallback = Callable[[], bool]
"""Polled before every tile. Returning True ends the run after the tiles done so far."""

# Keys of SegmentationResult.counts. Every prompt's mask ends in exactly one of MASK_OUTCOMES.
MASK_OUTCOMES = (
    "dropped_low_predicted_iou",
    "dropped_background",
    "dropped_low_class_probability",
    "dropped_too_large",
    "dropped_too_small",
    "dropped_tile_duplicate",
    "dropped_invalid_geometry",
    "dropped_outside_tissue",
    "dropped_merge_duplicate",
    "dropped_merge_conflict",
    "kept",
)
COUNT_KEYS = (
    "tiles_total",
    "tiles_skipped_no_tissue",
    "tiles_processed",
    "tiles_not_reached",
    "masks_generated",
    *MASK_OUTCOMES,
    "components_discarded",
)

# Logit above which a mask pixel is foreground, and the logit offset of SAM's stability
# score (segment-anything 1.0 uses 0.0 and 1.0 in SamAutomaticMaskGenerator).
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class SegmentationSettings:
    """Settings of one segmentation run, validated on creation and stored with the run.

    Attributes:
        mpp: Working pixel size in µm/px at which tiles are read (about 1 = 10x).
        tile_px: Side of a square tile in working pixels. The tile is resized to the
            model input size, so a tile equal to that size (1024 for the official
            models) avoids resampling.
        overlap_px: Overlap of neighbouring tiles in working pixels. None sizes it for the
            largest allowed mask (``overlap_for_max_area``, 240 px for the defaults).
        points_per_side: Prompt points per tile side, so points_per_side² prompts per tile.
        points_per_batch: Prompts per decoder call. Memory grows linearly with it.
        min_predicted_iou: Minimum predicted IoU of a mask, 0..1.
        min_class_probability: Minimum softmax probability of a mask's most probable
            class, 0..1.
        background_class: Class name whose predictions are dropped, or None to keep
            every class. It must be one of the model's class names.
        duplicate_box_iou: Box IoU above which NMS drops the lower-scored of two masks of
            one tile, 0..1.
        max_area_fraction: Maximum mask area as a fraction of the tile area.
        min_area_um2: Minimum mask area in µm².
        min_tile_tissue_fraction: Minimum tissue fraction of a tile for it to be segmented.
        min_mask_tissue_fraction: Minimum fraction of a mask's area inside tissue.
    """

    mpp: float = 1.0
    tile_px: int = 1024
    overlap_px: int | None = None
    points_per_side: int = 32
    points_per_batch: int = 64
    # NOTE: the two quality defaults are estimates, not tuned on a trained model.
    min_predicted_iou: float = 0.7
    min_class_probability: float = 0.5
    background_class: str | None = "background"
    duplicate_box_iou: float = 0.7
    max_area_fraction: float = 0.04
    min_area_um2: float = 100.0
    min_tile_tissue_fraction: float = 0.05
    min_mask_tissue_fraction: float = 0.5

    def __post_init__(self) -> None:
        _check_number("mpp", self.mpp, MPP_MIN, MPP_MAX)
        _check_integer("tile_px", self.tile_px, 64, 8192)
        if self.overlap_px is not None:
            _check_integer("overlap_px", self.overlap_px, 0, self.tile_px - 1)
        _check_integer("points_per_side", self.points_per_side, 1, 256)
        _check_integer("points_per_batch", self.points_per_batch, 1, 4096)
        _check_number("min_predicted_iou", self.min_predicted_iou, 0.0, 1.0)
        _check_number("min_class_probability", self.min_class_probability, 0.0, 1.0)
        if self.background_class is not None and (
            not isinstance(self.background_class, str) or not self.background_class.strip()
        ):
            raise SettingsError(
                f"Segmentation setting background_class must be a non-empty class name or "
                f"None, got {self.background_class!r}."
            )
        _check_number("duplicate_box_iou", self.duplicate_box_iou, 0.0, 1.0)
        _check_number("max_area_fraction", self.max_area_fraction, 0.0, 1.0, low_open=True)
        _check_number("min_area_um2", self.min_area_um2, 0.0, math.inf)
        _check_number("min_tile_tissue_fraction", self.min_tile_tissue_fraction, 0.0, 1.0)
        _check_number("min_mask_tissue_fraction", self.min_mask_tissue_fraction, 0.0, 1.0)
        if self.overlap_px is None and self.resolved_overlap_px >= self.tile_px:
            raise SettingsError(
                f"max_area_fraction {self.max_area_fraction} needs a tile overlap of "
                f"{self.resolved_overlap_px} px, which is not less than tile_px "
                f"({self.tile_px}). Use a max_area_fraction below about 0.75, or set "
                "overlap_px explicitly."
            )

    @property
    def max_area_px(self) -> float:
        """Maximum mask area in working pixels (max_area_fraction of the tile area)."""
        return self.max_area_fraction * self.tile_px * self.tile_px

    @property
    def resolved_overlap_px(self) -> int:
        """Tile overlap in working pixels, with None replaced by the size-based default."""
        if self.overlap_px is not None:
            return self.overlap_px
        return overlap_for_max_area(self.max_area_px)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict of field name to value."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentationSettings:
        """Build settings from a dict. Missing fields take their defaults.

        Raises:
            SettingsError: A key is not a field, or a value is out of range.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(
                f"Unknown segmentation settings {unknown}. Allowed keys: {sorted(names)}."
            )
        return cls(**data)


def _check_integer(name: str, value: Any, low: int, high: int) -> None:
    is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_integer or not low <= value <= high:
        raise SettingsError(
            f"Segmentation setting {name} must be a whole number in [{low}, {high}], "
            f"got {value!r}."
        )


def _check_number(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False
) -> None:
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    in_range = is_number and math.isfinite(value) and (
        (low < value if low_open else low <= value) and value <= high
    )
    if not in_range:
        bracket = "(" if low_open else "["
        raise SettingsError(
            f"Segmentation setting {name} must be a finite number in {bracket}{low}, {high}], "
            f"got {value!r}."
        )


@dataclass(frozen=True)
class LabeledInstance:
    """An instance with the class that the class-aware model gave it.

    Attributes:
        instance: Outline in level-0 pixels with its scores, tile and fragment flag.
        class_name: Most probable class, one of the model's class names.
        class_probability: Softmax probability of ``class_name``, 0..1.
    """

    instance: Instance
    class_name: str
    class_probability: float

    @property
    def polygon_level0(self) -> Polygon:
        """Outline in level-0 pixels, holes kept."""
        return self.instance.polygon_level0

    @property
    def predicted_iou(self) -> float:
        """The model's estimate of the mask's IoU with the true object."""
        return self.instance.predicted_iou


@dataclass(frozen=True)
class LabeledMergeResult:
    """Outcome of merge_labeled_instances, with the same rules as ``MergeResult``.

    Attributes:
        kept: Surviving instances, each with its own class.
        dropped_duplicate: Instances dropped as a duplicate of a larger one.
        dropped_conflict: Instances dropped in a partial-overlap conflict.
    """

    kept: tuple[LabeledInstance, ...]
    dropped_duplicate: tuple[LabeledInstance, ...]
    dropped_conflict: tuple[LabeledInstance, ...]


def merge_labeled_instances(instances: Sequence[LabeledInstance]) -> LabeledMergeResult:
    """Merge labeled instances across tiles with ``merge_instances``.

    The merge compares geometry and scores only, never classes. Each output carries the
    class of its own prediction, so a kept instance never takes the class of the
    instance that it replaced.
    """
    # merge_instances returns its input objects, so identity maps them back to labels.
    by_identity = {id(labeled.instance): labeled for labeled in instances}
    merged = merge_instances([labeled.instance for labeled in instances])
    return LabeledMergeResult(
        kept=tuple(by_identity[id(instance)] for instance in merged.kept),
        dropped_duplicate=tuple(by_identity[id(instance)] for instance in merged.dropped_duplicate),
        dropped_conflict=tuple(by_identity[id(instance)] for instance in merged.dropped_conflict),
    )


def remove_duplicate_boxes(
    boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Return the indexes kept by greedy box NMS, highest score first.

    A box is dropped when its IoU with a higher-scored kept box exceeds
    ``iou_threshold``. The pairwise IoUs are computed in one vectorised pass by
    ``torchvision.ops.nms``.

    Args:
        boxes_xyxy: (N, 4) float boxes (x_min, y_min, x_max, y_max) in any one pixel frame.
        scores: (N,) float scores. Equal scores keep the lower index first.
        iou_threshold: Box IoU in 0..1 above which the lower-scored box is dropped.

    Returns:
        (K,) int64 indexes into the inputs, sorted by decreasing score.
    """
    if boxes_xyxy.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    # A stable sort fixes the order of equal scores before NMS, so ties do not depend on
    # the sort that torchvision uses internally.
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    rank_scores = torch.arange(len(order), 0, -1, dtype=torch.float32)
    kept = torchvision.ops.nms(boxes_xyxy[order].float().cpu(), rank_scores, iou_threshold)
    return order.cpu()[kept]


@dataclass(frozen=True)
class SegmentationResult:
    """Outcome of segment_slide.

    Attributes:
        instances: Kept instances after merging, in level-0 pixels, each with its class.
        counts: Integer counters, keys COUNT_KEYS. ``masks_generated`` (one mask per
            prompt) equals the sum of MASK_OUTCOMES. ``components_discarded`` counts the
            extra components of traced masks and is not part of that sum.
        kept_per_class: Kept instances per class name, for every class except
            ``background_class``. The values add up to ``counts["kept"]``.
        class_names: The model's class names, in logit order.
        tiles_total: Tiles in the grid.
        tiles_processed: Tiles that the model segmented.
        overlap_px: Tile overlap used, in working pixels.
        stopped: ``should_stop`` ended the run early, so tiles after the last processed
            one were not segmented (``counts["tiles_not_reached"]``).
    """

    instances: tuple[LabeledInstance, ...]
    counts: dict[str, int]
    kept_per_class: dict[str, int]
    class_names: tuple[str, ...]
    tiles_total: int
    tiles_processed: int
    overlap_px: int
    stopped: bool


def segment_slide(
    slide: Slide,
    model: ClassAwareSam | LoadedClassAwareSam,
    settings: SegmentationSettings,
    tissue: TissueMask,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> SegmentationResult:
    """Segment and classify every object of a whole slide with a class-aware SAM.

    Args:
        slide: Opened slide.
        model: Class-aware SAM (or the result of ``load_class_aware``) in eval mode on
            the device to run on.
        settings: Validated segmentation settings.
        tissue: Tissue mask of the same slide, from ``detect_tissue``.
        progress: Called after every tile with (tiles_done, tiles_total).
        should_stop: Polled before every tile. When it returns True, the run stops and
            returns the merged result of the tiles done so far with ``stopped`` set.

    Raises:
        SettingsError: ``settings.background_class`` is not one of the model's classes.

    Cost: one image encoding per processed tile plus ``points_per_side**2`` prompts
    decoded. Each decoder batch contains ``points_per_batch`` masks of tile_px² pixels.
    """
    class_aware = model.model if isinstance(model, LoadedClassAwareSam) else model
    class_names = tuple(class_aware.class_names)
    if settings.background_class is not None and settings.background_class not in class_names:
        raise SettingsError(
            f"background_class {settings.background_class!r} is not a class of this model "
            f"{list(class_names)}. Set background_class to one of them, or to None for a "
            "model without a background class."
        )

    frame = slide.working_frame(settings.mpp)
    overlap_px = settings.resolved_overlap_px
    tiles = tile_grid(frame.width_px, frame.height_px, settings.tile_px, overlap_px)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["tiles_total"] = len(tiles)
    logger.info(
        "Segmenting %s: %d tiles of %d px at %.3g µm/px, overlap %d px, %d prompts per tile",
        slide.info.path.name, len(tiles), settings.tile_px, settings.mpp, overlap_px,
        settings.points_per_side**2,
    )

    candidates: list[LabeledInstance] = []
    stopped = False
    for tiles_done, tile in enumerate(tiles, start=1):
        if should_stop is not None and should_stop():
            stopped = True
            counts["tiles_not_reached"] = len(tiles) - tiles_done + 1
            logger.info(
                "Segmentation of %s stopped on request before tile %d of %d",
                slide.info.path.name, tiles_done, len(tiles),
            )
            break
        if _tile_tissue_fraction(tile, frame, tissue) < settings.min_tile_tissue_fraction:
            counts["tiles_skipped_no_tissue"] += 1
            logger.debug("Tile %d skipped: too little tissue", tile.index)
        else:
            counts["tiles_processed"] += 1
            candidates.extend(
                _segment_tile(slide, frame, tile, class_aware, settings, tissue, counts)
            )
        if progress is not None:
            progress(tiles_done, len(tiles))

    merged = merge_labeled_instances(candidates)
    counts["dropped_merge_duplicate"] = len(merged.dropped_duplicate)
    counts["dropped_merge_conflict"] = len(merged.dropped_conflict)
    counts["kept"] = len(merged.kept)
    kept_per_class = {
        name: 0 for name in class_names if name != settings.background_class
    }
    for labeled in merged.kept:
        kept_per_class[labeled.class_name] += 1
    logger.info(
        "Segmentation of %s: %s, kept per class %s",
        slide.info.path.name, counts, kept_per_class,
    )
    return SegmentationResult(
        instances=merged.kept,
        counts=counts,
        kept_per_class=kept_per_class,
        class_names=class_names,
        tiles_total=len(tiles),
        tiles_processed=counts["tiles_processed"],
        overlap_px=overlap_px,
        stopped=stopped,
    )


def prompt_grid(points_per_side: int, image_size: int) -> np.ndarray:
    """Return (points_per_side², 2) point (x, y) prompts at the centres of a regular grid.

    Coordinates are model-input pixels of an ``image_size`` square, row-major from the
    top-left cell.
    """
    centres = (np.arange(points_per_side) + 0.5) * (image_size / points_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float32)


@dataclass(frozen=True)
class _TileMasks:
    """Masks of one tile that passed the score and size filters, cropped to their boxes.

    ``boxes_xyxy`` are (K, 4) int pixel-edge boxes in tile pixels, and ``crops[k]`` is the
    (y_max - y_min, x_max - x_min) bool mask inside box k. Cropping keeps a tile's
    survivors small, because each is at most ``max_area_fraction`` of the tile.
    """

    boxes_xyxy: np.ndarray
    crops: tuple[np.ndarray, ...]
    predicted_ious: np.ndarray
    stability_scores: np.ndarray
    class_indexes: np.ndarray
    class_probabilities: np.ndarray


def _segment_tile(
    slide: Slide,
    frame: WorkingFrame,
    tile: Tile,
    model: ClassAwareSam,
    settings: SegmentationSettings,
    tissue: TissueMask,
    counts: dict[str, int],
) -> list[LabeledInstance]:
    """Prompt one tile, filter its masks and return its labeled instances, updating ``counts``."""
    rgb = frame.read(slide, tile.x_px, tile.y_px, tile.w_px, tile.h_px)
    size = model.image_size
    device = next(model.parameters()).device
    interpolation = cv2.INTER_AREA if size < tile.w_px else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (size, size), interpolation=interpolation)
    image = torch.from_numpy(resized).permute(2, 0, 1)[None].float().to(device)
    with torch.no_grad():
        embedding = model.embed_images(image)

    points = torch.from_numpy(prompt_grid(settings.points_per_side, size)).to(device)
    background_index = (
        model.class_names.index(settings.background_class)
        if settings.background_class is not None
        else -1
    )
    tile_counts = dict.fromkeys(MASK_OUTCOMES, 0)
    batches = []
    for start in range(0, len(points), settings.points_per_batch):
        batch_points = points[start : start + settings.points_per_batch, None, :]
        prediction = model.predict(
            embedding,
            point_coords=batch_points,
            point_labels=torch.ones(batch_points.shape[:2], dtype=torch.int64, device=device),
            mask_threshold=MASK_THRESHOLD,
        )
        batches.append(
            _filter_batch(prediction, tile, frame, settings, background_index, tile_counts)
        )

    survivors = _remove_tile_duplicates(batches, settings, tile_counts)
    instances = _trace_instances(
        survivors, slide, frame, tile, model.class_names, settings, tissue, tile_counts, counts
    )

    for key, value in tile_counts.items():
        counts[key] += value
    counts["masks_generated"] += len(points)
    logger.debug(
        "Tile %d at (%d, %d) px: %d prompts, %d candidates, drops %s",
        tile.index, tile.x_px, tile.y_px, len(points), len(instances), tile_counts,
    )
    return instances


def _filter_batch(
    prediction: ClassAwarePrediction,
    tile: Tile,
    frame: WorkingFrame,
    settings: SegmentationSettings,
    background_index: int,
    tile_counts: dict[str, int],
) -> _TileMasks:
    """Apply the score, background and size filters to one decoder batch."""
    predicted_ious = prediction.iou_predictions.float()
    probabilities, class_indexes = prediction.class_probabilities.float().max(dim=1)

    # Each filter tests only the masks that passed the earlier ones, so every prompt
    # lands in exactly one outcome.
    low_iou = predicted_ious < settings.min_predicted_iou
    background = ~low_iou & (class_indexes == background_index)
    low_probability = ~low_iou & ~background & (probabilities < settings.min_class_probability)
    passed = ~(low_iou | background | low_probability)
    tile_counts["dropped_low_predicted_iou"] += int(low_iou.sum())
    tile_counts["dropped_background"] += int(background.sum())
    tile_counts["dropped_low_class_probability"] += int(low_probability.sum())

    logits = _logits_at_tile_size(prediction, passed, tile.w_px)
    # Pixels past the image edge are the reader's padding, not slide.
    image_w_px, image_h_px = _image_size_in_tile(tile, frame)
    logits = logits[:, :image_h_px, :image_w_px]
    masks = logits > MASK_THRESHOLD
    areas_px = masks.flatten(1).sum(dim=1)
    too_large = areas_px > settings.max_area_px
    below_min_area = areas_px * settings.mpp**2 < settings.min_area_um2
    too_small = ~too_large & (below_min_area | (areas_px == 0))
    tile_counts["dropped_too_large"] += int(too_large.sum())
    tile_counts["dropped_too_small"] += int(too_small.sum())
    sized = ~(too_large | too_small)

    # SAM's stability score: IoU of the mask thresholded one logit above and below.
    logits = logits[sized]
    high = (logits > MASK_THRESHOLD + STABILITY_OFFSET).flatten(1).sum(dim=1)
    low = (logits > MASK_THRESHOLD - STABILITY_OFFSET).flatten(1).sum(dim=1)
    stability = high.float() / low.float().clamp(min=1.0)

    masks = masks[sized]
    boxes_xyxy = _mask_boxes_xyxy(masks).cpu().numpy()
    masks = masks.cpu().numpy()
    crops = tuple(
        masks[index, y_min:y_max, x_min:x_max].copy()
        for index, (x_min, y_min, x_max, y_max) in enumerate(boxes_xyxy.tolist())
    )
    return _TileMasks(
        boxes_xyxy=boxes_xyxy,
        crops=crops,
        predicted_ious=predicted_ious[passed][sized].cpu().numpy(),
        stability_scores=stability.cpu().numpy(),
        class_indexes=class_indexes[passed][sized].cpu().numpy(),
        class_probabilities=probabilities[passed][sized].cpu().numpy(),
    )


def _logits_at_tile_size(
    prediction: ClassAwarePrediction, selected: torch.Tensor, tile_px: int
) -> torch.Tensor:
    """Return (K, tile_px, tile_px) mask logits of the selected prompts in tile pixels.

    The square tile was resized to the square model input without padding, so the low-
    resolution logits cover the tile exactly and one bilinear resize maps them back.
    """
    low_res = prediction.low_res_logits[selected].float()
    if low_res.shape[0] == 0:
        return torch.zeros((0, tile_px, tile_px), device=low_res.device)
    return F.interpolate(low_res, (tile_px, tile_px), mode="bilinear", align_corners=False)[:, 0]


def _remove_tile_duplicates(
    batches: list[_TileMasks], settings: SegmentationSettings, tile_counts: dict[str, int]
) -> _TileMasks:
    """Join the batches of a tile and drop duplicate masks by box NMS."""
    boxes_xyxy = np.concatenate([batch.boxes_xyxy for batch in batches])
    crops = [crop for batch in batches for crop in batch.crops]
    fields = {
        name: np.concatenate([getattr(batch, name) for batch in batches])
        for name in ("predicted_ious", "stability_scores", "class_indexes", "class_probabilities")
    }
    keep = remove_duplicate_boxes(
        torch.from_numpy(boxes_xyxy).float(),
        torch.from_numpy(fields["predicted_ious"]),
        settings.duplicate_box_iou,
    ).numpy()
    tile_counts["dropped_tile_duplicate"] += len(crops) - len(keep)
    return _TileMasks(
        boxes_xyxy=boxes_xyxy[keep],
        crops=tuple(crops[index] for index in keep.tolist()),
        **{name: value[keep] for name, value in fields.items()},
    )


def _mask_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Return (N, 4) int64 pixel-edge boxes (x_min, y_min, x_max, y_max) of non-empty masks."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.int64)
    # argmax returns the first maximum, so on the reversed axis it finds the last pixel.
    columns = masks.any(dim=1).to(torch.uint8)
    rows = masks.any(dim=2).to(torch.uint8)
    x_min = columns.argmax(dim=1)
    x_max = columns.shape[1] - columns.flip(1).argmax(dim=1)
    y_min = rows.argmax(dim=1)
    y_max = rows.shape[1] - rows.flip(1).argmax(dim=1)
    return torch.stack([x_min, y_min, x_max, y_max], dim=1)


def _trace_instances(
    survivors: _TileMasks,
    slide: Slide,
    frame: WorkingFrame,
    tile: Tile,
    class_names: Sequence[str],
    settings: SegmentationSettings,
    tissue: TissueMask,
    tile_counts: dict[str, int],
    counts: dict[str, int],
) -> list[LabeledInstance]:
    """Trace surviving masks into level-0 polygons and apply the tissue filter."""
    px_area_um2 = settings.mpp**2
    x_min_level0, y_min_level0, w_level0, h_level0 = slide.info.bounds_level0
    instances = []
    for index, crop in enumerate(survivors.crops):
        component = largest_component_polygon(crop)
        if component.polygon is None:
            tile_counts["dropped_invalid_geometry"] += 1
            continue
        counts["components_discarded"] += component.component_count - 1
        x_min_px, y_min_px = survivors.boxes_xyxy[index, :2].tolist()
        polygon_tile_px = shapely.affinity.translate(component.polygon, x_min_px, y_min_px)
        if polygon_tile_px.area * px_area_um2 < settings.min_area_um2:
            tile_counts["dropped_too_small"] += 1
            continue

        # The last working pixel can reach past the level-0 bounds by under one pixel.
        polygon_level0 = shapely.clip_by_rect(
            polygon_px_to_level0(polygon_tile_px, frame, tile),
            x_min_level0, y_min_level0, x_min_level0 + w_level0, y_min_level0 + h_level0,
        )
        repaired = sort_polygons(make_valid_polygons(polygon_level0))
        if not repaired:
            tile_counts["dropped_invalid_geometry"] += 1
            continue
        polygon_level0 = repaired[0]
        if tissue.fraction_of_geometry(polygon_level0) < settings.min_mask_tissue_fraction:
            tile_counts["dropped_outside_tissue"] += 1
            continue

        x0_px, y0_px, x1_px, y1_px = polygon_tile_px.bounds
        instance = Instance(
            polygon_level0=polygon_level0,
            predicted_iou=float(survivors.predicted_ious[index]),
            stability_score=float(survivors.stability_scores[index]),
            tile_index=tile.index,
            touches_interior_edge=tile.touches_interior_edge(x0_px, y0_px, x1_px, y1_px),
        )
        instances.append(
            LabeledInstance(
                instance=instance,
                class_name=class_names[int(survivors.class_indexes[index])],
                class_probability=float(survivors.class_probabilities[index]),
            )
        )
    return instances
