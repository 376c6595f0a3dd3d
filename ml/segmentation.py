"""Whole-slide instance segmentation with a class-aware SAM: tiles, prompt grid, filters, merge.

Pipeline of :func:`segment_slide`, each step counted in ``SegmentationResult.counts``:

1. Cut the slide's working frame (``settings.mpp``) into the same overlapping tiles as
   :func:`ml.proposals.propose`, and skip tiles whose tissue fraction is below
   ``min_tile_tissue_fraction`` without running the image encoder on them.
2. Resize each tile to the model input (S x S) and prompt it with a regular grid of
   ``points_per_side``² single foreground points, ``points_per_batch`` prompts per decoder
   call. Each prompt yields one mask, one predicted IoU and one class distribution.
   With ``skip_prompts_in_kept_masks`` the grid is prompted coarse to fine, and a point
   inside a mask that passed the filters of step 3 is skipped.
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

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from shapely.geometry import Polygon

from ml.class_aware import ClassAwareSam, DecoderOutput
from ml.errors import SettingsError
from ml.instances import Instance
from ml.merge import merge_instances
from ml.model_files import LoadedClassAwareSam
from ml.slide import Slide, WorkingFrame
from ml.tile_journal import (
    TileJournal,
    completed_in_grid,
    decode_instance,
    encode_instance,
    record_tile,
    replay_tile,
)

# Tiling, tile skipping and mask tracing are shared with the proposals, so both runs
# apply exactly the same rules.
from ml.tile_masks import (
    TiledMaskSettings,
    image_size_in_tile,
    start_tile_read,
    tile_tissue_fraction,
    trace_mask,
)
from ml.tiling import Tile, tile_grid
from ml.tissue import TissueMask

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every tile with tissue.

Tiles skipped for too little tissue take no time, so they are not counted. A time
estimate from the rate of tiles done is then valid from the first tile on.
"""

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
    "prompts_skipped_in_kept_mask",
    *MASK_OUTCOMES,
    "components_discarded",
)

# Logit above which a mask pixel is foreground, and the logit offset of SAM's stability
# score (segment-anything 1.0 uses 0.0 and 1.0 in SamAutomaticMaskGenerator).
MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class SegmentationSettings(TiledMaskSettings):
    """Settings of one segmentation run: the shared tiling and filter settings, plus the
    class-aware model's thresholds. The tile is resized to the model input size, so a
    ``tile_px`` equal to that size (1024 for the official models) avoids resampling.

    Attributes:
        min_predicted_iou: Minimum predicted IoU of a mask, 0..1.
        min_class_probability: Minimum softmax probability of a mask's most probable
            class, 0..1.
        background_class: Class name whose predictions are dropped, or None to keep
            every class. It must be one of the model's class names.
        duplicate_box_iou: Box IoU above which NMS drops the lower-scored of two masks of
            one tile, 0..1.
        skip_prompts_in_kept_masks: Prompt the grid coarse to fine and skip a point that
            lies inside a mask of the same tile that passed the filters. Such a point
            mostly repeats that mask, which NMS would drop. Off by default: with the demo
            model it saved 6 % of the prompts and lost 2 to 6 points of recall
            (docs/benchmarks.md, "Whole slide with a trained model").
    """

    SETTINGS_KIND: ClassVar[str] = "Segmentation"

    # NOTE: the two quality defaults are estimates, not tuned on a trained model.
    min_predicted_iou: float = 0.7
    min_class_probability: float = 0.5
    background_class: str | None = "background"
    duplicate_box_iou: float = 0.7
    skip_prompts_in_kept_masks: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_number("min_predicted_iou", self.min_predicted_iou, 0.0, 1.0)
        self.check_number("min_class_probability", self.min_class_probability, 0.0, 1.0)
        if self.background_class is not None and (
            not isinstance(self.background_class, str) or not self.background_class.strip()
        ):
            raise SettingsError(
                f"Segmentation setting background_class must be a non-empty class name or "
                f"None, got {self.background_class!r}."
            )
        self.check_number("duplicate_box_iou", self.duplicate_box_iou, 0.0, 1.0)
        if not isinstance(self.skip_prompts_in_kept_masks, bool):
            raise SettingsError(
                "Segmentation setting skip_prompts_in_kept_masks must be true or false, got "
                f"{self.skip_prompts_in_kept_masks!r}."
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
    journal: TileJournal | None = None,
) -> SegmentationResult:
    """Segment and classify every object of a whole slide with a class-aware SAM.

    Args:
        slide: Opened slide.
        model: Class-aware SAM (or the result of ``load_class_aware``) in eval mode on
            the device to run on.
        settings: Validated segmentation settings.
        tissue: Tissue mask of the same slide, from ``detect_tissue``.
        progress: Called after every tile with tissue as (tiles done, tiles with tissue).
        should_stop: Polled before every tile. When it returns True, the run stops and
            returns the merged result of the tiles done so far with ``stopped`` set.
        journal: Where each finished tile is recorded. Tiles already in it are taken
            from it instead of being segmented again (see ml.tile_journal).

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
    with_tissue = [
        tile for tile in tiles
        if tile_tissue_fraction(tile, frame, tissue) >= settings.min_tile_tissue_fraction
    ]
    processed = {tile.index for tile in with_tissue}
    journaled = completed_in_grid(journal, processed, slide.info.path.name)
    if journaled and progress is not None:
        # The journaled tiles count as done at once, in one report.
        progress(len(journaled), len(with_tissue))
    # One reader thread reads the next tile with tissue while the model works on this one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-read") as reader:
        upcoming = iter([tile for tile in with_tissue if tile.index not in journaled])
        next_read = start_tile_read(reader, slide, frame, next(upcoming, None))
        for tiles_done, tile in enumerate(tiles, start=1):
            if should_stop is not None and should_stop():
                stopped = True
                counts["tiles_not_reached"] = len(tiles) - tiles_done + 1
                logger.info(
                    "Segmentation of %s stopped on request before tile %d of %d",
                    slide.info.path.name, tiles_done, len(tiles),
                )
                break
            if tile.index not in processed:
                counts["tiles_skipped_no_tissue"] += 1
                logger.debug("Tile %d skipped: too little tissue", tile.index)
                continue
            counts["tiles_processed"] += 1
            if tile.index in journaled:
                candidates.extend(
                    replay_tile(journaled[tile.index], tile.index, counts, _decode_labeled)
                )
                continue
            rgb = next_read.result()
            next_read = start_tile_read(reader, slide, frame, next(upcoming, None))
            counts_before = dict(counts)
            tile_instances = _segment_tile(
                slide, frame, tile, rgb, class_aware, settings, tissue, counts
            )
            candidates.extend(tile_instances)
            record_tile(
                journal, tile.index, tile_instances, _encode_labeled, counts_before, counts
            )
            if progress is not None:
                progress(counts["tiles_processed"], len(with_tissue))

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


def _encode_labeled(labeled: LabeledInstance) -> dict:
    return {
        **encode_instance(labeled.instance),
        "class_name": labeled.class_name,
        "class_probability": float(labeled.class_probability),
    }


def _decode_labeled(row: dict, tile_index: int) -> LabeledInstance:
    return LabeledInstance(
        decode_instance(row, tile_index), row["class_name"], row["class_probability"]
    )


def prompt_grid(points_per_side: int, image_size: int) -> np.ndarray:
    """Return (points_per_side², 2) point (x, y) prompts at the centres of a regular grid.

    Coordinates are model-input pixels of an ``image_size`` square, row-major from the
    top-left cell.
    """
    centres = (np.arange(points_per_side) + 0.5) * (image_size / points_per_side)
    xs, ys = np.meshgrid(centres, centres)
    return np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float32)


def coarse_to_fine_order(points_per_side: int) -> np.ndarray:
    """Return an order of the row-major prompt grid that covers the tile coarse to fine.

    Grid cells whose row and column are multiples of a stride come first, from the
    largest power-of-two stride down to 1, row-major within a stride. So the first
    prompts spread over the whole tile, and later ones fill in between.
    """
    rows, columns = np.divmod(np.arange(points_per_side**2), points_per_side)
    stride = 1 << max(0, (points_per_side - 1).bit_length())
    rank = np.full(points_per_side**2, -1)
    level = 0
    while stride >= 1:
        on_level = (rank < 0) & (rows % stride == 0) & (columns % stride == 0)
        rank[on_level] = level
        level += 1
        stride //= 2
    return np.lexsort((np.arange(points_per_side**2), rank))


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
    rgb: np.ndarray,
    model: ClassAwareSam,
    settings: SegmentationSettings,
    tissue: TissueMask,
    counts: dict[str, int],
) -> list[LabeledInstance]:
    """Prompt one tile's pixels, filter the masks and return the labeled instances, updating ``counts``."""
    size = model.image_size
    device = next(model.parameters()).device
    interpolation = cv2.INTER_AREA if size < tile.w_px else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (size, size), interpolation=interpolation)
    image = torch.from_numpy(resized).permute(2, 0, 1)[None].float().to(device)
    with torch.no_grad():
        embedding = model.embed_images(image)

    points_xy = prompt_grid(settings.points_per_side, size)
    if settings.skip_prompts_in_kept_masks:
        points_xy = points_xy[coarse_to_fine_order(settings.points_per_side)]
        # Which tile pixels the kept masks of earlier batches cover.
        covered = np.zeros((tile.h_px, tile.w_px), dtype=bool)
        points_tile_px = np.minimum(
            (points_xy * (tile.w_px / size)).astype(np.int64), [tile.w_px - 1, tile.h_px - 1]
        )
    background_index = (
        model.class_names.index(settings.background_class)
        if settings.background_class is not None
        else -1
    )
    tile_counts = dict.fromkeys(MASK_OUTCOMES, 0)
    batches = []
    decoded = 0
    for start in range(0, len(points_xy), settings.points_per_batch):
        batch = slice(start, start + settings.points_per_batch)
        batch_xy = points_xy[batch]
        if settings.skip_prompts_in_kept_masks:
            tile_xy = points_tile_px[batch]
            batch_xy = batch_xy[~covered[tile_xy[:, 1], tile_xy[:, 0]]]
            if len(batch_xy) == 0:
                continue
        batch_points = torch.from_numpy(batch_xy).to(device)[:, None, :]
        decoded += len(batch_points)
        # The decoder's low-resolution logits are resized to the tile, so the model-size
        # masks of ClassAwareSam.predict are not needed.
        with torch.no_grad():
            output = model(
                image_embeddings=embedding,
                point_coords=batch_points,
                point_labels=torch.ones(batch_points.shape[:2], dtype=torch.int64, device=device),
            )
        tile_masks = _filter_batch(output, tile, frame, settings, background_index, tile_counts)
        batches.append(tile_masks)
        if settings.skip_prompts_in_kept_masks:
            for (x_min, y_min, x_max, y_max), crop in zip(
                tile_masks.boxes_xyxy.tolist(), tile_masks.crops, strict=True
            ):
                covered[y_min:y_max, x_min:x_max] |= crop

    survivors = _remove_tile_duplicates(batches, settings, tile_counts)
    instances = _trace_instances(
        survivors, slide, frame, tile, model.class_names, settings, tissue, tile_counts, counts
    )

    for key, value in tile_counts.items():
        counts[key] += value
    counts["masks_generated"] += decoded
    counts["prompts_skipped_in_kept_mask"] += len(points_xy) - decoded
    logger.debug(
        "Tile %d at (%d, %d) px: %d prompts decoded of %d, %d candidates, drops %s",
        tile.index, tile.x_px, tile.y_px, decoded, len(points_xy), len(instances), tile_counts,
    )
    return instances


def _filter_batch(
    output: DecoderOutput,
    tile: Tile,
    frame: WorkingFrame,
    settings: SegmentationSettings,
    background_index: int,
    tile_counts: dict[str, int],
) -> _TileMasks:
    """Apply the score, background and size filters to one decoder batch."""
    predicted_ious = output.iou_pred[:, 0].float()
    probabilities, class_indexes = torch.softmax(output.class_logits.float(), dim=1).max(dim=1)

    # Each filter tests only the masks that passed the earlier ones, so every prompt
    # lands in exactly one outcome.
    low_iou = predicted_ious < settings.min_predicted_iou
    background = ~low_iou & (class_indexes == background_index)
    low_probability = ~low_iou & ~background & (probabilities < settings.min_class_probability)
    passed = ~(low_iou | background | low_probability)
    tile_counts["dropped_low_predicted_iou"] += int(low_iou.sum())
    tile_counts["dropped_background"] += int(background.sum())
    tile_counts["dropped_low_class_probability"] += int(low_probability.sum())

    logits = _logits_at_tile_size(output, passed, tile.w_px)
    # Pixels past the image edge are the reader's padding, not slide.
    image_w_px, image_h_px = image_size_in_tile(tile, frame)
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
    output: DecoderOutput, selected: torch.Tensor, tile_px: int
) -> torch.Tensor:
    """Return (K, tile_px, tile_px) mask logits of the selected prompts in tile pixels.

    The square tile was resized to the square model input without padding, so the low-
    resolution logits cover the tile exactly and one bilinear resize maps them back.
    """
    low_res = output.mask_logits[selected].float()
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
    instances = []
    for index, crop in enumerate(survivors.crops):
        offset_px = tuple(survivors.boxes_xyxy[index, :2].tolist())
        traced = trace_mask(
            crop, offset_px, slide, frame, tile, settings, tissue, tile_counts, counts
        )
        if traced is None:
            continue
        instance = Instance(
            polygon_level0=traced.polygon_level0,
            predicted_iou=float(survivors.predicted_ious[index]),
            stability_score=float(survivors.stability_scores[index]),
            tile_index=tile.index,
            touches_interior_edge=traced.touches_interior_edge,
        )
        instances.append(
            LabeledInstance(
                instance=instance,
                class_name=class_names[int(survivors.class_indexes[index])],
                class_probability=float(survivors.class_probabilities[index]),
            )
        )
    return instances
