"""Tissue mask of a slide from a coarse thumbnail, as a raster and as level-0 polygons.

Proposals outside tissue are dropped with :meth:`TissueMask.fraction_of_geometry`, and
tiles without tissue are skipped with :meth:`TissueMask.fraction_in_box`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from ml.errors import SlideError
from ml.slide import Slide, WorkingFrame

logger = logging.getLogger(__name__)

MAX_MASK_PX = 2048
MIN_MASK_MPP = 4.0
# HSV saturation (0..255) thresholds. Glass scans below about 15, and the floor keeps noise
# on blank slides out, and the cap keeps pale tissue in when tissue fills most of the
# thumbnail and Otsu would split stained tissue into two classes. Both are estimates tuned
# on H&E and PAS samples.
SATURATION_FLOOR = 20
SATURATION_CAP = 45
# Minimum optical density of the darkest channel. Glass (channel values above ~228) is below it.
OPTICAL_DENSITY_FLOOR = 0.05
# Pixels whose brightest channel is below this are black scan borders, pen or debris.
DARK_MAX_CHANNEL = 40
CLOSE_RADIUS_UM = 16.0
OPEN_RADIUS_UM = 4.0
MIN_OBJECT_UM2 = 10_000.0
# Above this fraction of dark pixels the slide is likely fluorescence or dark-field.
DARK_SLIDE_FRACTION = 0.5
MIN_HOLE_UM2 = 10_000.0


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Tissue region of a slide, on a coarse grid and as level-0 polygons.

    Attributes:
        mask: (H, W) read-only bool array on ``frame``'s grid, True for tissue.
        frame: The working frame of the mask (its mpp, origin and level-0 scale).
        polygons_level0: The tissue outline in level-0 pixels with its holes, as a valid
            MultiPolygon (empty when there is no tissue), prepared for fast predicates.
        warnings: Sentences for the user about a mask that may be wrong (a dark,
            possibly fluorescence slide; no tissue found).
    """

    mask: np.ndarray
    frame: WorkingFrame
    polygons_level0: MultiPolygon
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        expected_shape = (self.frame.height_px, self.frame.width_px)
        if self.mask.shape != expected_shape or self.mask.dtype != bool:
            raise SlideError(
                f"Tissue mask must be a bool array of shape {expected_shape} to match its "
                f"frame, got {self.mask.dtype} {self.mask.shape}."
            )
        # A private read-only copy, so the caller's array stays writable and this one fixed.
        mask = self.mask.copy()
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)
        shapely.prepare(self.polygons_level0)

    @classmethod
    def from_mask(cls, mask: np.ndarray, frame: WorkingFrame) -> TissueMask:
        """Build a TissueMask from a (H, W) bool raster on ``frame``, tracing its polygons."""
        mask = np.asarray(mask, dtype=bool)
        return cls(mask=mask, frame=frame, polygons_level0=_trace_polygons_level0(mask, frame))

    @property
    def mpp(self) -> float:
        """Pixel size of the mask in µm/px."""
        return self.frame.mpp

    @property
    def origin_level0(self) -> tuple[float, float]:
        """Level-0 (x, y) of the mask's top-left corner."""
        return (self.frame.origin_x_level0, self.frame.origin_y_level0)

    @property
    def area_um2(self) -> float:
        """Tissue area in µm², counted from mask pixels."""
        return float(np.count_nonzero(self.mask)) * self.mpp**2

    def fraction_in_box(
        self, x_level0: float, y_level0: float, w_level0: float, h_level0: float
    ) -> float:
        """Return the fraction (0..1) of a level-0 box that is tissue.

        Mask pixels cut by the box edges count by the part of them inside the box, and
        parts of the box outside the mask count as no tissue.
        """
        if not (w_level0 > 0 and h_level0 > 0):
            raise SlideError(
                f"Box size must be positive, got w_level0={w_level0}, h_level0={h_level0}."
            )
        x0_px, y0_px = self.frame.from_level0(x_level0, y_level0)
        x1_px, y1_px = self.frame.from_level0(x_level0 + w_level0, y_level0 + h_level0)
        weights_x, cols = _pixel_coverage(x0_px, x1_px, self.mask.shape[1])
        weights_y, rows = _pixel_coverage(y0_px, y1_px, self.mask.shape[0])
        if cols.size == 0 or rows.size == 0:
            return 0.0
        window = self.mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        tissue_px = float(weights_y @ window.astype(np.float64) @ weights_x)
        return tissue_px / ((x1_px - x0_px) * (y1_px - y0_px))

    def fraction_of_geometry(self, geometry_level0: BaseGeometry) -> float:
        """Return the fraction (0..1) of a level-0 polygon's area that lies inside tissue.

        Geometries wholly inside or outside tissue are resolved by the prepared tissue
        polygons without computing an intersection. A geometry without area returns 0.0.
        """
        area = geometry_level0.area
        if area <= 0:
            return 0.0
        if self.polygons_level0.contains(geometry_level0):
            return 1.0
        if not self.polygons_level0.intersects(geometry_level0):
            return 0.0
        nearby_tissue = shapely.clip_by_rect(self.polygons_level0, *geometry_level0.bounds)
        return min(1.0, nearby_tissue.intersection(geometry_level0).area / area)


def detect_tissue(slide: Slide, mpp: float | None = None) -> TissueMask:
    """Detect tissue on a thumbnail of the slide bounds.

    Method, on the thumbnail's RGB pixels (transparent and out-of-slide areas are already
    blended onto the background colour by the reader):

    1. A pixel is tissue when its HSV saturation is at least the Otsu threshold of the
       non-dark pixels clipped to SATURATION_FLOOR..SATURATION_CAP, its darkest channel has
       an optical density of at least OPTICAL_DENSITY_FLOOR, and its brightest channel is
       at least DARK_MAX_CHANNEL. So bright unsaturated glass and dark unsaturated scan
       borders are rejected, while stained PAS or H&E tissue is kept.
    2. A closing (CLOSE_RADIUS_UM) joins tissue across lumina, and an opening
       (OPEN_RADIUS_UM) removes single-pixel noise.
    3. Objects smaller than MIN_OBJECT_UM2 are removed, and holes smaller than
       MIN_HOLE_UM2 are filled. Larger holes (tears, glass inside the section) are kept.

    Args:
        slide: An opened slide.
        mpp: Mask pixel size in µm/px. The default makes the long side of the slide bounds
            at most MAX_MASK_PX pixels, and never finer than MIN_MASK_MPP.
    """
    if mpp is None:
        long_side_level0 = max(slide.info.bounds_level0[2], slide.info.bounds_level0[3])
        mpp = max(MIN_MASK_MPP, slide.mpp, long_side_level0 * slide.mpp / MAX_MASK_PX)
    frame = slide.working_frame(mpp)
    rgb = frame.read(slide, 0, 0, frame.width_px, frame.height_px)
    # Limitation: brightfield only. On fluorescence, bright nuclei count as tissue.
    dark_fraction = float(np.mean(rgb.max(axis=2) < DARK_MAX_CHANNEL))
    warnings = []
    if dark_fraction > DARK_SLIDE_FRACTION:
        warnings.append(
            f"The slide is {100 * dark_fraction:.0f}% dark and may be a fluorescence or "
            "dark-field scan. Tissue detection and SAM proposals assume brightfield (PAS, "
            "H&E), so check the tissue mask before trusting any result."
        )
    mask = _clean_mask(_threshold_tissue(rgb, slide), mpp)
    traced = TissueMask.from_mask(mask, frame)
    # The last mask pixel can reach past the slide edge, so clip to the bounds.
    x_level0, y_level0, w_level0, h_level0 = slide.info.bounds_level0
    bounds = shapely.box(x_level0, y_level0, x_level0 + w_level0, y_level0 + h_level0)
    clipped = traced.polygons_level0.intersection(bounds)
    polygons = [
        part for part in getattr(clipped, "geoms", [clipped])
        if isinstance(part, Polygon) and not part.is_empty
    ]
    if not polygons:
        warnings.append(
            "No tissue was found on this slide, so SAM proposals will skip every tile. "
            "Check that the file shows a stained section."
        )
    for warning in warnings:
        logger.warning("%s: %s", slide.info.path, warning)
    tissue = TissueMask(
        mask=mask, frame=frame, polygons_level0=MultiPolygon(polygons), warnings=tuple(warnings)
    )
    logger.info(
        "Tissue of %s at %.3g µm/px: %d of %d px, %.4g mm2, %d polygons",
        slide.info.path.name, mpp, np.count_nonzero(mask), mask.size,
        tissue.area_um2 / 1e6, len(tissue.polygons_level0.geoms),
    )
    return tissue


def _threshold_tissue(rgb: np.ndarray, slide: Slide) -> np.ndarray:
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    darkest_channel = rgb.min(axis=2).astype(np.float64)
    optical_density = -np.log10((darkest_channel + 1.0) / 256.0)
    not_dark = rgb.max(axis=2) >= DARK_MAX_CHANNEL

    candidates = saturation[not_dark]
    if candidates.size:
        otsu, _ = cv2.threshold(
            candidates.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
        )
    else:
        otsu = SATURATION_CAP
    saturation_threshold = min(max(otsu, SATURATION_FLOOR), SATURATION_CAP)
    logger.debug(
        "Tissue thresholds for %s: Otsu saturation %.1f, used %.1f",
        slide.info.path.name, otsu, saturation_threshold,
    )
    return (
        (saturation >= saturation_threshold)
        & (optical_density >= OPTICAL_DENSITY_FLOOR)
        & not_dark
    )


def _clean_mask(mask: np.ndarray, mpp: float) -> np.ndarray:
    mask_u8 = mask.astype(np.uint8)
    mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_CLOSE, _disk(CLOSE_RADIUS_UM / mpp))
    mask_u8 = cv2.morphologyEx(mask_u8, cv2.MORPH_OPEN, _disk(OPEN_RADIUS_UM / mpp))
    pixel_area_um2 = mpp * mpp
    mask_u8 = _drop_small_components(mask_u8, MIN_OBJECT_UM2 / pixel_area_um2)
    # Holes are background components that do not touch the image edge.
    background = _drop_small_components(
        1 - mask_u8, MIN_HOLE_UM2 / pixel_area_um2, keep_touching_edge=True
    )
    return background == 0


def _disk(radius_px: float) -> np.ndarray:
    radius = max(0, round(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _drop_small_components(
    mask_u8: np.ndarray, min_area_px: float, keep_touching_edge: bool = False
) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    height, width = mask_u8.shape
    keep = np.zeros(count, dtype=bool)
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        touches_edge = x == 0 or y == 0 or x + w == width or y + h == height
        keep[label] = area >= min_area_px or (keep_touching_edge and touches_edge)
    return keep[labels].astype(np.uint8)


def _trace_polygons_level0(mask: np.ndarray, frame: WorkingFrame) -> MultiPolygon:
    """Trace a bool mask into a valid level-0 MultiPolygon with holes."""
    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    # Contours run through the centres of edge pixels (pixel j spans j..j+1).
    rings = [contour.reshape(-1, 2).astype(np.float64) + 0.5 for contour in contours]
    parts = []
    for index, ring in enumerate(rings):
        if hierarchy[0][index][3] != -1:
            continue  # A hole, added with its outer contour below.
        if len(ring) < 3:
            parts.append(shapely.MultiPoint(ring).envelope)  # One or two pixels wide.
            continue
        holes = []
        child = hierarchy[0][index][2]
        while child != -1:
            if len(rings[child]) >= 3:
                holes.append(rings[child])
            child = hierarchy[0][child][0]
        parts.append(shapely.make_valid(Polygon(ring, holes)))

    # Growing by half a pixel moves the outlines from pixel centres onto pixel edges, so
    # the polygon area matches the pixel count.
    tissue_px = shapely.union_all(parts).buffer(0.5, cap_style="square", join_style="mitre")
    tissue_px = shapely.simplify(tissue_px, 0.25, preserve_topology=True)

    def to_level0(coords_px: np.ndarray) -> np.ndarray:
        x_level0, y_level0 = frame.to_level0(coords_px[:, 0], coords_px[:, 1])
        return np.column_stack([x_level0, y_level0])

    tissue_level0 = shapely.transform(tissue_px, to_level0)
    polygons = [
        part for part in getattr(tissue_level0, "geoms", [tissue_level0])
        if isinstance(part, Polygon) and not part.is_empty
    ]
    return MultiPolygon(polygons)


def _pixel_coverage(start_px: float, end_px: float, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Return per-pixel overlap lengths of [start_px, end_px) with pixels 0..size_px-1."""
    first = max(0, math.floor(start_px))
    last = min(size_px, math.ceil(end_px))
    indices = np.arange(first, last)
    overlap = np.minimum(end_px, indices + 1) - np.maximum(start_px, indices)
    return np.clip(overlap, 0.0, 1.0), indices
