"""SAM zero-shot proposals for a whole slide: tiles, automatic masks, filters, merge.

Pipeline of :func:`propose`, each step counted in ``ProposalResult.counts``:

1. Cut the slide's working frame (``settings.mpp``) into overlapping tiles. Tiles whose
   tissue fraction is below ``min_tile_tissue_fraction`` are skipped and never reach the
   SAM image encoder.
2. Generate automatic masks on each remaining tile with ``settings.mask_generator``:
   "fast" (``ml.mask_generation.FastMaskGenerator``, filters on low-resolution logits)
   or "reference" (segment-anything's ``SamAutomaticMaskGenerator``).
3. Drop masks larger than ``max_area_fraction`` of the tile area (not tissue structures),
   smaller than ``min_area_um2``, or with less than ``min_mask_tissue_fraction`` of their
   area inside the tissue mask.
4. Trace each mask into a level-0 polygon. A mask with several components keeps the
   largest one, and the rest are counted in ``components_discarded``.
5. Merge across tiles with :func:`ml.merge.merge_instances`.

Usage::

    loaded = load_sam(resolve_checkpoint("vit_b", cache_dir=cache))
    with open_slide(path) as slide:
        result = propose(slide, loaded.model, ProposalSettings(), detect_tissue(slide))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from segment_anything.modeling import Sam

from ml.instances import Instance
from ml.mask_generation import (
    MaskGenerator,
    build_mask_generator,
    check_generator_options,
)
from ml.merge import merge_instances
from ml.sam import LoadedSam
from ml.slide import Slide, WorkingFrame
from ml.tile_journal import (
    TileJournal,
    completed_in_grid,
    decode_instance,
    encode_instance,
    record_tile,
    replay_tile,
)
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

# Keys of ProposalResult.stage_seconds, in pipeline order.
STAGES = ("read", "encoder", "mask_generation", "polygons", "merge")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every tile with tissue.

Tiles skipped for too little tissue take no time, so they are not counted. A time
estimate from the rate of tiles done is then valid from the first tile on.
"""

# Keys of ProposalResult.counts. Every generated mask ends in exactly one of MASK_OUTCOMES.
MASK_OUTCOMES = (
    "dropped_too_large",
    "dropped_too_small",
    "dropped_outside_tissue",
    "dropped_invalid_geometry",
    "dropped_merge_duplicate",
    "dropped_merge_conflict",
    "kept",
)
COUNT_KEYS = (
    "tiles_total",
    "tiles_skipped_no_tissue",
    "tiles_processed",
    "masks_generated",
    *MASK_OUTCOMES,
    "components_discarded",
)


@dataclass(frozen=True)
class ProposalSettings(TiledMaskSettings):
    """Settings of one proposal run: the shared tiling and filter settings, plus SAM's.

    Attributes:
        pred_iou_thresh: Minimum SAM predicted IoU of a mask, 0..1.
        stability_score_thresh: Minimum SAM stability score of a mask, 0..1.
        box_nms_thresh: Box IoU above which SAM's NMS drops a mask within a tile, 0..1.
        mask_generator: "fast" (filters on low-resolution logits, upsamples survivors
            only) or "reference" (Meta's SamAutomaticMaskGenerator).
        encoder_dtype: "float32" or "bfloat16" (image encoder under autocast, fast
            generator only).
    """

    SETTINGS_KIND: ClassVar[str] = "Proposal"

    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    mask_generator: str = "fast"
    encoder_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_number("pred_iou_thresh", self.pred_iou_thresh, 0.0, 1.0)
        self.check_number("stability_score_thresh", self.stability_score_thresh, 0.0, 1.0)
        self.check_number("box_nms_thresh", self.box_nms_thresh, 0.0, 1.0)
        check_generator_options(self.mask_generator, self.encoder_dtype)


@dataclass(frozen=True)
class ProposalResult:
    """Outcome of propose.

    Attributes:
        instances: Kept instances after merging, in level-0 pixels.
        counts: Integer counters, keys COUNT_KEYS. ``masks_generated`` equals the sum of
            MASK_OUTCOMES. ``components_discarded`` counts the extra components of kept
            and dropped masks and is not part of that sum.
        tiles_total: Tiles in the grid.
        tiles_processed: Tiles that SAM segmented (the rest had too little tissue).
        overlap_px: Tile overlap used, in working pixels.
        stage_seconds: Wall seconds per stage, summed over tiles: ``read`` (tile
            pixels), ``encoder`` (SAM image encoder), ``mask_generation`` (prompts,
            filters and NMS after the encoder), ``polygons`` (size and tissue filters,
            tracing) and ``merge``.
    """

    instances: tuple[Instance, ...]
    counts: dict[str, int]
    tiles_total: int
    tiles_processed: int
    overlap_px: int
    stage_seconds: dict[str, float] = field(default_factory=dict)


def propose(
    slide: Slide,
    sam_model: Sam | LoadedSam,
    settings: ProposalSettings,
    tissue: TissueMask,
    progress: ProgressCallback | None = None,
    journal: TileJournal | None = None,
) -> ProposalResult:
    """Propose instances for a whole slide with SAM's automatic mask generator.

    Args:
        slide: Opened slide.
        sam_model: SAM model (or LoadedSam) in eval mode on the device to run on.
        settings: Validated proposal settings.
        tissue: Tissue mask of the same slide, from ``detect_tissue``.
        progress: Called after every tile with tissue as (tiles done, tiles with tissue).
        journal: Where each finished tile is recorded. Tiles already in it are taken
            from it instead of being segmented again (see ml.tile_journal).

    Cost: one SAM image encoding per processed tile plus ``points_per_side**2`` prompts
    through the mask decoder. On a CPU with vit_b that is tens of seconds per tile
    (docs/proposals.md has measurements), so run it in a background task, on a GPU
    where possible.
    """
    model = sam_model.model if isinstance(sam_model, LoadedSam) else sam_model
    frame = slide.working_frame(settings.mpp)
    overlap_px = settings.resolved_overlap_px
    tiles = tile_grid(frame.width_px, frame.height_px, settings.tile_px, overlap_px)
    generator = build_mask_generator(
        model,
        settings.mask_generator,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        box_nms_thresh=settings.box_nms_thresh,
        encoder_dtype=settings.encoder_dtype,
    )
    stage_seconds = dict.fromkeys(STAGES, 0.0)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["tiles_total"] = len(tiles)
    logger.info(
        "Proposing on %s: %d tiles of %d px at %.3g µm/px, overlap %d px, %s masks",
        slide.info.path.name, len(tiles), settings.tile_px, settings.mpp, overlap_px,
        settings.mask_generator,
    )

    candidates: list[Instance] = []
    with_tissue = [
        tile for tile in tiles
        if tile_tissue_fraction(tile, frame, tissue) >= settings.min_tile_tissue_fraction
    ]
    processed = {tile.index for tile in with_tissue}
    journaled = completed_in_grid(journal, processed, slide.info.path.name)
    if journaled and progress is not None:
        # The journaled tiles count as done at once, in one report.
        progress(len(journaled), len(with_tissue))
    # One reader thread reads the next tile while SAM works on the current one, so the
    # "read" stage counts only the time spent waiting for pixels.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tile-read") as reader:
        upcoming = iter([tile for tile in with_tissue if tile.index not in journaled])
        next_read = start_tile_read(reader, slide, frame, next(upcoming, None))
        for tile in tiles:
            if tile.index not in processed:
                counts["tiles_skipped_no_tissue"] += 1
                logger.debug("Tile %d skipped: too little tissue", tile.index)
                continue
            counts["tiles_processed"] += 1
            if tile.index in journaled:
                candidates.extend(
                    replay_tile(journaled[tile.index], tile.index, counts, decode_instance)
                )
                continue
            wait_started = time.perf_counter()
            rgb = next_read.result()
            stage_seconds["read"] += time.perf_counter() - wait_started
            next_read = start_tile_read(reader, slide, frame, next(upcoming, None))
            counts_before = dict(counts)
            tile_instances = _propose_tile(
                slide, frame, tile, rgb, generator, settings, tissue, counts,
                stage_seconds,
            )
            candidates.extend(tile_instances)
            record_tile(
                journal, tile.index, tile_instances, encode_instance, counts_before, counts
            )
            if progress is not None:
                progress(counts["tiles_processed"], len(with_tissue))

    merge_started = time.perf_counter()
    merged = merge_instances(candidates)
    stage_seconds["merge"] = time.perf_counter() - merge_started
    counts["dropped_merge_duplicate"] = len(merged.dropped_duplicate)
    counts["dropped_merge_conflict"] = len(merged.dropped_conflict)
    counts["kept"] = len(merged.kept)
    logger.info(
        "Proposals for %s: %s, seconds per stage %s",
        slide.info.path.name, counts,
        {stage: round(seconds, 2) for stage, seconds in stage_seconds.items()},
    )
    return ProposalResult(
        instances=merged.kept,
        counts=counts,
        tiles_total=len(tiles),
        tiles_processed=counts["tiles_processed"],
        overlap_px=overlap_px,
        stage_seconds=stage_seconds,
    )


def _propose_tile(
    slide: Slide,
    frame: WorkingFrame,
    tile: Tile,
    rgb: np.ndarray,
    generator: MaskGenerator,
    settings: ProposalSettings,
    tissue: TissueMask,
    counts: dict[str, int],
    stage_seconds: dict[str, float],
) -> list[Instance]:
    """Run SAM on one tile's pixels and return its filtered instances, updating the counters."""
    # The generator's early size filter measures the whole tile, but the filter below
    # measures the part on the image, so a tile that overhangs the image edge skips it.
    image_w_px, image_h_px = image_size_in_tile(tile, frame)
    whole_tile = (image_w_px, image_h_px) == (tile.w_px, tile.h_px)
    generated = generator.generate(rgb, max_area_px=settings.max_area_px if whole_tile else None)
    stage_seconds["encoder"] += generated.encoder_seconds
    stage_seconds["mask_generation"] += generated.mask_generation_seconds

    polygons_started = time.perf_counter()
    records = generated.records
    px_area_um2 = settings.mpp**2
    instances = []
    tile_counts = dict.fromkeys(
        ("dropped_too_large", "dropped_too_small", "dropped_invalid_geometry",
         "dropped_outside_tissue"),
        0,
    )
    tile_counts["dropped_too_large"] = generated.dropped_too_large

    for record in records:
        # Pixels past the image edge are the reader's padding, not slide.
        mask = record.mask[:image_h_px, :image_w_px]
        area_px = int(np.count_nonzero(mask))
        if area_px > settings.max_area_px:
            tile_counts["dropped_too_large"] += 1
            continue
        if area_px * px_area_um2 < settings.min_area_um2 or area_px == 0:
            tile_counts["dropped_too_small"] += 1
            continue

        traced = trace_mask(
            mask, (0, 0), slide, frame, tile, settings, tissue, tile_counts, counts
        )
        if traced is None:
            continue
        instances.append(
            Instance(
                polygon_level0=traced.polygon_level0,
                predicted_iou=record.predicted_iou,
                stability_score=record.stability_score,
                tile_index=tile.index,
                touches_interior_edge=traced.touches_interior_edge,
            )
        )

    for key, value in tile_counts.items():
        counts[key] += value
    counts["masks_generated"] += len(records) + generated.dropped_too_large
    stage_seconds["polygons"] += time.perf_counter() - polygons_started
    logger.debug(
        "Tile %d at (%d, %d) px: %d masks, %d candidates, drops %s",
        tile.index, tile.x_px, tile.y_px, len(records), len(instances), tile_counts,
    )
    return instances

