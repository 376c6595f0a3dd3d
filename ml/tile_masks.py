"""Pieces shared by SAM proposals and class-aware segmentation, which tile a slide alike.

- ``TiledMaskSettings``: the tiling and mask-filter settings both runs use, validated.
- ``tile_tissue_fraction`` and ``image_size_in_tile``: which part of a tile is slide and
  how much of it is tissue.
- ``trace_mask``: one tile mask to a level-0 polygon, through the filters both runs apply
  after a mask is kept (largest part, minimum area, slide bounds, repair, tissue).
- ``start_tile_read``: read the next tile in a thread while the model works on this one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import Polygon

from ml.errors import SettingsError
from ml.polygons import (
    largest_component_polygon,
    make_valid_polygons,
    polygon_px_to_level0,
    sort_polygons,
)
from ml.slide import MPP_MAX, MPP_MIN, Slide, WorkingFrame
from ml.tiling import Tile, overlap_for_max_area
from ml.tissue import TissueMask


def start_tile_read(
    reader: ThreadPoolExecutor, slide: Slide, frame: WorkingFrame, tile: Tile | None
) -> Future | None:
    """Start reading ``tile``'s RGB pixels in ``reader``'s thread; None when there is no tile."""
    if tile is None:
        return None
    return reader.submit(frame.read, slide, tile.x_px, tile.y_px, tile.w_px, tile.h_px)


@dataclass(frozen=True)
class TiledMaskSettings:
    """Tiling and mask-filter settings, validated on creation and stored with a run.

    Attributes:
        mpp: Working pixel size in µm/px at which tiles are read (about 1 = 10x).
        tile_px: Side of a square tile in working pixels.
        overlap_px: Overlap of neighbouring tiles in working pixels. None sizes it for the
            largest allowed mask (``overlap_for_max_area``, 240 px for the defaults).
        points_per_side: Prompt points per tile side, so points_per_side² prompts per tile.
        points_per_batch: Prompts per decoder batch. Memory grows linearly with it.
        max_area_fraction: Maximum mask area as a fraction of the tile area.
        min_area_um2: Minimum mask area in µm².
        min_tile_tissue_fraction: Minimum tissue fraction of a tile for it to be segmented.
        min_mask_tissue_fraction: Minimum fraction of a mask's area inside tissue.
    """

    # Word that names the settings in error messages, e.g. "Proposal setting mpp must ...".
    SETTINGS_KIND: ClassVar[str] = "Tiling"

    mpp: float = 1.0
    tile_px: int = 1024
    overlap_px: int | None = None
    points_per_side: int = 32
    points_per_batch: int = 64
    max_area_fraction: float = 0.04
    min_area_um2: float = 100.0
    min_tile_tissue_fraction: float = 0.05
    min_mask_tissue_fraction: float = 0.5

    def __post_init__(self) -> None:
        self.check_number("mpp", self.mpp, MPP_MIN, MPP_MAX)
        self.check_integer("tile_px", self.tile_px, 64, 8192)
        if self.overlap_px is not None:
            self.check_integer("overlap_px", self.overlap_px, 0, self.tile_px - 1)
        self.check_integer("points_per_side", self.points_per_side, 1, 256)
        self.check_integer("points_per_batch", self.points_per_batch, 1, 4096)
        self.check_number("max_area_fraction", self.max_area_fraction, 0.0, 1.0, low_open=True)
        self.check_number("min_area_um2", self.min_area_um2, 0.0, math.inf)
        self.check_number("min_tile_tissue_fraction", self.min_tile_tissue_fraction, 0.0, 1.0)
        self.check_number("min_mask_tissue_fraction", self.min_mask_tissue_fraction, 0.0, 1.0)
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
    def from_dict(cls, data: Mapping[str, Any]):
        """Build settings from a dict. Missing fields take their defaults.

        Raises:
            SettingsError: A key is not a field, or a value is out of range.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(
                f"Unknown {cls.SETTINGS_KIND.lower()} settings {unknown}. "
                f"Allowed keys: {sorted(names)}."
            )
        return cls(**data)

    def check_integer(self, name: str, value: Any, low: int, high: int) -> None:
        is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not is_integer or not low <= value <= high:
            raise SettingsError(
                f"{self.SETTINGS_KIND} setting {name} must be a whole number in "
                f"[{low}, {high}], got {value!r}."
            )

    def check_number(
        self, name: str, value: Any, low: float, high: float, *, low_open: bool = False
    ) -> None:
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        in_range = is_number and math.isfinite(value) and (
            (low < value if low_open else low <= value) and value <= high
        )
        if not in_range:
            bracket = "(" if low_open else "["
            raise SettingsError(
                f"{self.SETTINGS_KIND} setting {name} must be a finite number in "
                f"{bracket}{low}, {high}], got {value!r}."
            )


def image_size_in_tile(tile: Tile, frame: WorkingFrame) -> tuple[int, int]:
    """Return (w_px, h_px) of the part of a tile that lies on the image (tiles may overhang)."""
    return (
        max(0, min(tile.w_px, frame.width_px - tile.x_px)),
        max(0, min(tile.h_px, frame.height_px - tile.y_px)),
    )


def tile_tissue_fraction(tile: Tile, frame: WorkingFrame, tissue: TissueMask) -> float:
    """Return the tissue fraction of the part of the tile that lies on the image."""
    w_px, h_px = image_size_in_tile(tile, frame)
    if w_px == 0 or h_px == 0:
        return 0.0
    x_level0, y_level0 = frame.to_level0(tile.x_px, tile.y_px)
    scale = frame.scale_level0_per_px
    return tissue.fraction_in_box(x_level0, y_level0, w_px * scale, h_px * scale)


@dataclass(frozen=True)
class TracedMask:
    """A tile mask as a level-0 polygon, and whether it may be cut by a tile edge."""

    polygon_level0: Polygon
    touches_interior_edge: bool


def trace_mask(
    mask: np.ndarray,
    offset_px: tuple[float, float],
    slide: Slide,
    frame: WorkingFrame,
    tile: Tile,
    settings: TiledMaskSettings,
    tissue: TissueMask,
    tile_counts: dict[str, int],
    counts: dict[str, int],
) -> TracedMask | None:
    """Trace one mask into a level-0 polygon, or count why it is dropped and return None.

    Args:
        mask: (H, W) bool mask, placed at ``offset_px`` (x, y) in tile pixels.
        tile_counts: Per-tile drop counters ``dropped_too_small``,
            ``dropped_invalid_geometry`` and ``dropped_outside_tissue``, incremented here.
        counts: Run counters; ``components_discarded`` grows by the extra parts of a
            multi-part mask, of which only the largest is kept.
    """
    component = largest_component_polygon(mask)
    if component.polygon is None:
        tile_counts["dropped_invalid_geometry"] += 1
        return None
    counts["components_discarded"] += component.component_count - 1
    polygon_tile_px = shapely.affinity.translate(component.polygon, *offset_px)
    if polygon_tile_px.area * settings.mpp**2 < settings.min_area_um2:
        tile_counts["dropped_too_small"] += 1
        return None

    # The last working pixel can reach past the level-0 bounds by under one pixel.
    x_min_level0, y_min_level0, w_level0, h_level0 = slide.info.bounds_level0
    polygon_level0 = shapely.clip_by_rect(
        polygon_px_to_level0(polygon_tile_px, frame, tile),
        x_min_level0, y_min_level0, x_min_level0 + w_level0, y_min_level0 + h_level0,
    )
    repaired = sort_polygons(make_valid_polygons(polygon_level0))
    if not repaired:
        tile_counts["dropped_invalid_geometry"] += 1
        return None
    polygon_level0 = repaired[0]
    if tissue.fraction_of_geometry(polygon_level0) < settings.min_mask_tissue_fraction:
        tile_counts["dropped_outside_tissue"] += 1
        return None

    x0_px, y0_px, x1_px, y1_px = polygon_tile_px.bounds
    return TracedMask(polygon_level0, tile.touches_interior_edge(x0_px, y0_px, x1_px, y1_px))
