"""SAM zero-shot proposals for a whole slide: tiles, automatic masks, filters, merge.

Pipeline of :func:`propose`, each step counted in ``ProposalResult.counts``:

1. Cut the slide's working frame (``settings.mpp``) into overlapping tiles. Tiles whose
   tissue fraction is below ``min_tile_tissue_fraction`` are skipped and never reach the
   SAM image encoder.
2. Run segment-anything's ``SamAutomaticMaskGenerator`` on each remaining tile.
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

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from ml.errors import SettingsError
from ml.instances import Instance
from ml.merge import merge_instances
from ml.polygons import (
    largest_component_polygon,
    make_valid_polygons,
    polygon_px_to_level0,
    sort_polygons,
)
from ml.sam import LoadedSam
from ml.slide import MPP_MAX, MPP_MIN, Slide, WorkingFrame
from ml.tiling import Tile, overlap_for_max_area, tile_grid
from ml.tissue import TissueMask

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(tiles_done, tiles_total)`` after every tile, skipped ones included."""

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
class ProposalSettings:
    """Settings of one proposal run, validated on creation and stored with the run.

    Attributes:
        mpp: Working pixel size in µm/px at which tiles are read (about 1 = 10x).
        tile_px: Side of a square SAM input tile in working pixels.
        overlap_px: Overlap of neighbouring tiles in working pixels. None sizes it for the
            largest allowed mask (``overlap_for_max_area``, 240 px for the defaults).
        points_per_side: Prompt points per tile side. SAM decodes points_per_side² prompts.
        points_per_batch: Prompts per SAM decoder batch. Memory grows linearly with it.
        pred_iou_thresh: Minimum SAM predicted IoU of a mask, 0..1.
        stability_score_thresh: Minimum SAM stability score of a mask, 0..1.
        box_nms_thresh: Box IoU above which SAM's NMS drops a mask within a tile, 0..1.
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
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
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
        _check_number("pred_iou_thresh", self.pred_iou_thresh, 0.0, 1.0)
        _check_number("stability_score_thresh", self.stability_score_thresh, 0.0, 1.0)
        _check_number("box_nms_thresh", self.box_nms_thresh, 0.0, 1.0)
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
    def from_dict(cls, data: Mapping[str, Any]) -> ProposalSettings:
        """Build settings from a dict. Missing fields take their defaults.

        Raises:
            SettingsError: A key is not a field, or a value is out of range.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(
                f"Unknown proposal settings {unknown}. Allowed keys: {sorted(names)}."
            )
        return cls(**data)


def _check_integer(name: str, value: Any, low: int, high: int) -> None:
    is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_integer or not low <= value <= high:
        raise SettingsError(
            f"Proposal setting {name} must be a whole number in [{low}, {high}], got {value!r}."
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
            f"Proposal setting {name} must be a finite number in {bracket}{low}, {high}], "
            f"got {value!r}."
        )


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
    """

    instances: tuple[Instance, ...]
    counts: dict[str, int]
    tiles_total: int
    tiles_processed: int
    overlap_px: int


def propose(
    slide: Slide,
    sam_model: Sam | LoadedSam,
    settings: ProposalSettings,
    tissue: TissueMask,
    progress: ProgressCallback | None = None,
) -> ProposalResult:
    """Propose instances for a whole slide with SAM's automatic mask generator.

    Args:
        slide: Opened slide.
        sam_model: SAM model (or LoadedSam) in eval mode on the device to run on.
        settings: Validated proposal settings.
        tissue: Tissue mask of the same slide, from ``detect_tissue``.
        progress: Called after every tile with (tiles_done, tiles_total).

    Cost: one SAM image encoding per processed tile plus ``points_per_side**2`` prompts
    decoded at tile resolution. On CPU with vit_b that is tens of seconds per tile
    (estimate), so run it in a background task, on a GPU where possible.
    """
    model = sam_model.model if isinstance(sam_model, LoadedSam) else sam_model
    frame = slide.working_frame(settings.mpp)
    overlap_px = settings.resolved_overlap_px
    tiles = tile_grid(frame.width_px, frame.height_px, settings.tile_px, overlap_px)
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=settings.points_per_side,
        points_per_batch=settings.points_per_batch,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        box_nms_thresh=settings.box_nms_thresh,
        output_mode="binary_mask",
    )
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["tiles_total"] = len(tiles)
    logger.info(
        "Proposing on %s: %d tiles of %d px at %.3g µm/px, overlap %d px",
        slide.info.path.name, len(tiles), settings.tile_px, settings.mpp, overlap_px,
    )

    candidates: list[Instance] = []
    for tiles_done, tile in enumerate(tiles, start=1):
        if _tile_tissue_fraction(tile, frame, tissue) < settings.min_tile_tissue_fraction:
            counts["tiles_skipped_no_tissue"] += 1
            logger.debug("Tile %d skipped: too little tissue", tile.index)
        else:
            counts["tiles_processed"] += 1
            candidates.extend(
                _propose_tile(slide, frame, tile, generator, settings, tissue, counts)
            )
        if progress is not None:
            progress(tiles_done, len(tiles))

    merged = merge_instances(candidates)
    counts["dropped_merge_duplicate"] = len(merged.dropped_duplicate)
    counts["dropped_merge_conflict"] = len(merged.dropped_conflict)
    counts["kept"] = len(merged.kept)
    logger.info("Proposals for %s: %s", slide.info.path.name, counts)
    return ProposalResult(
        instances=merged.kept,
        counts=counts,
        tiles_total=len(tiles),
        tiles_processed=counts["tiles_processed"],
        overlap_px=overlap_px,
    )


def _image_size_in_tile(tile: Tile, frame: WorkingFrame) -> tuple[int, int]:
    """Return (w_px, h_px) of the part of a tile that lies on the image (tiles may overhang)."""
    return (
        max(0, min(tile.w_px, frame.width_px - tile.x_px)),
        max(0, min(tile.h_px, frame.height_px - tile.y_px)),
    )


def _tile_tissue_fraction(tile: Tile, frame: WorkingFrame, tissue: TissueMask) -> float:
    """Return the tissue fraction of the part of the tile that lies on the image."""
    w_px, h_px = _image_size_in_tile(tile, frame)
    if w_px == 0 or h_px == 0:
        return 0.0
    x_level0, y_level0 = frame.to_level0(tile.x_px, tile.y_px)
    scale = frame.scale_level0_per_px
    return tissue.fraction_in_box(x_level0, y_level0, w_px * scale, h_px * scale)


def _propose_tile(
    slide: Slide,
    frame: WorkingFrame,
    tile: Tile,
    generator: SamAutomaticMaskGenerator,
    settings: ProposalSettings,
    tissue: TissueMask,
    counts: dict[str, int],
) -> list[Instance]:
    """Run SAM on one tile and return its filtered instances, updating ``counts``."""
    rgb = frame.read(slide, tile.x_px, tile.y_px, tile.w_px, tile.h_px)
    records = generator.generate(rgb)
    image_w_px, image_h_px = _image_size_in_tile(tile, frame)
    px_area_um2 = settings.mpp**2
    x_min_level0, y_min_level0, w_level0, h_level0 = slide.info.bounds_level0
    instances = []
    tile_counts = dict.fromkeys(
        ("dropped_too_large", "dropped_too_small", "dropped_invalid_geometry",
         "dropped_outside_tissue"),
        0,
    )

    for record in records:
        # Pixels past the image edge are the reader's padding, not slide.
        mask = np.asarray(record["segmentation"], dtype=bool)[:image_h_px, :image_w_px]
        area_px = int(np.count_nonzero(mask))
        if area_px > settings.max_area_px:
            tile_counts["dropped_too_large"] += 1
            continue
        if area_px * px_area_um2 < settings.min_area_um2 or area_px == 0:
            tile_counts["dropped_too_small"] += 1
            continue

        component = largest_component_polygon(mask)
        if component.polygon is None:
            tile_counts["dropped_invalid_geometry"] += 1
            continue
        counts["components_discarded"] += component.component_count - 1
        polygon_tile_px = component.polygon
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
        instances.append(
            Instance(
                polygon_level0=polygon_level0,
                predicted_iou=float(record["predicted_iou"]),
                stability_score=float(record["stability_score"]),
                tile_index=tile.index,
                touches_interior_edge=tile.touches_interior_edge(x0_px, y0_px, x1_px, y1_px),
            )
        )

    for key, value in tile_counts.items():
        counts[key] += value
    counts["masks_generated"] += len(records)
    logger.debug(
        "Tile %d at (%d, %d) px: %d masks, %d candidates, drops %s",
        tile.index, tile.x_px, tile.y_px, len(records), len(instances), tile_counts,
    )
    return instances
