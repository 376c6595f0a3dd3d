"""Draw with SAM: one polygon for a reviewer's click or dragged box on a slide.

A prompt is segmented inside a square window of ``window_px`` working pixels at the
segmenter's mpp. Window origins lie on a fixed grid with a step of half a window, and a
prompt gets the grid window in which it is most central. A click is therefore at least a
quarter window away from every window edge, and nearby clicks share a window. SAM's
image embedding of each window is computed once and kept in an LRU cache, so a second
click in the same window runs only the prompt encoder and the mask decoder.

Windows may reach past the slide. The reader pads those pixels with the slide's
background colour, and masks are cut back to the slide before tracing.

Usage::

    segmenter = PromptSegmenter(load_sam(checkpoint), mpp=1.0)
    with open_slide("biopsy.svs") as slide:
        result = segmenter.segment_point(slide, x_level0=10_500.0, y_level0=7_230.0)
    result.polygon_level0  # shapely Polygon in level-0 pixels, or None with result.reason
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from shapely.geometry import Polygon

from ml.errors import SettingsError
from ml.polygons import (
    largest_component_polygon,
    make_valid_polygons,
    polygon_px_to_level0,
    sort_polygons,
)
from ml.sam import LoadedSam
from ml.slide import MPP_MAX, MPP_MIN, PointLevel0, Slide, WorkingFrame
from ml.tiling import Tile

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_PX = 1024
DEFAULT_CACHE_SIZE = 8
WINDOW_PX_MIN = 16
WINDOW_PX_MAX = 8192
CACHE_SIZE_MAX = 1024


@dataclass(frozen=True)
class PromptWindow:
    """A square SAM input window in working pixels.

    Attributes:
        x_px: Left edge. Negative when the window reaches past the slide's left edge.
        y_px: Top edge.
        size_px: Side length.
        on_grid: Whether the origin lies on the half-window grid. Only a box too large
            for every grid window gets a window centred on it, off the grid.
    """

    x_px: int
    y_px: int
    size_px: int
    on_grid: bool

    def as_tile(self) -> Tile:
        """Return the window as a Tile, for ``ml.polygons.polygon_px_to_level0``."""
        step_px = self.size_px // 2
        return Tile(
            index=0,
            x_px=self.x_px,
            y_px=self.y_px,
            w_px=self.size_px,
            h_px=self.size_px,
            row=self.y_px // step_px,
            col=self.x_px // step_px,
            left_interior=False,
            top_interior=False,
            right_interior=False,
            bottom_interior=False,
        )


@dataclass(frozen=True)
class PromptResult:
    """The polygon that SAM drew for one prompt.

    Attributes:
        polygon_level0: Outline in level-0 pixels with holes kept, clipped to the slide
            bounds, or None when SAM's mask is empty on the slide (see ``reason``).
        predicted_iou: SAM's predicted IoU of the chosen mask.
        window_origin_level0: Level-0 position of the window's top-left corner.
        cache_hit: Whether the window's image embedding came from the cache, so that the
            image encoder did not run for this prompt.
        mask_area_um2: Area of ``polygon_level0`` in µm², 0.0 when it is None.
        point_in_mask: For a click, whether the chosen mask contains the clicked pixel.
            False means that no mask contained it and the highest-scoring one was
            taken. None for a box prompt.
        reason: Why ``polygon_level0`` is None, otherwise None.
    """

    polygon_level0: Polygon | None
    predicted_iou: float
    window_origin_level0: PointLevel0
    cache_hit: bool
    mask_area_um2: float
    point_in_mask: bool | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _WindowKey:
    """Cache key of one window's embedding. The slide's own mpp is part of it because
    ``open_slide(path, mpp=...)`` can map the same file to another level-0 scale."""

    slide_path: str
    slide_mpp: float
    mpp: float
    x_px: int
    y_px: int


@dataclass(frozen=True, eq=False)
class _Embedding:
    """The SamPredictor state that ``predict`` needs after ``set_image``.

    Attributes:
        features: (1, C, G, G) image embedding on the model's device (C = 256 and G = 64
            for the official models).
        original_size: (H, W) of the window image before SAM's resize.
        input_size: (H, W) of the resized image inside SAM's square input.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def window_for_box_px(
    x0_px: float, y0_px: float, x1_px: float, y1_px: float, window_px: int
) -> PromptWindow:
    """Choose the prompt window for a box (or a point, with x0 == x1 and y0 == y1).

    Grid origins are the multiples of ``window_px // 2``. Per axis, the chosen window
    contains the box and has its centre nearest to the box centre. A point is then at
    least ``window_px / 4`` from every window edge. When no grid window contains the box
    along an axis (possible for a box wider than half a window), the window is centred on
    the box along that axis and ``on_grid`` is False. A box exactly one window wide whose
    start is not a whole pixel then reaches past the window's far edge by under a pixel.

    Args:
        x0_px, y0_px, x1_px, y1_px: Box in working pixels, xyxy, with x0 <= x1, y0 <= y1
            and a size of at most ``window_px``.
        window_px: Window side in working pixels, even.
    """
    x_px, x_on_grid = _window_start_px(x0_px, x1_px, window_px)
    y_px, y_on_grid = _window_start_px(y0_px, y1_px, window_px)
    return PromptWindow(x_px=x_px, y_px=y_px, size_px=window_px, on_grid=x_on_grid and y_on_grid)


def _window_start_px(start_px: float, end_px: float, window_px: int) -> tuple[int, bool]:
    """Return one axis's window origin and whether it lies on the grid."""
    step_px = window_px // 2
    # Grid index k puts the window at [k * step, k * step + window], centred at (k + 1) * step.
    k_first = math.ceil((end_px - window_px) / step_px)
    k_last = math.floor(start_px / step_px)
    k_central = math.floor((start_px + end_px) / 2.0 / step_px - 1.0 + 0.5)
    if k_first <= k_last:
        # Limitation: near the slide's edge the window reaches past it, so the input has padding.
        return min(max(k_central, k_first), k_last) * step_px, True
    # Limitation: an off-grid window is never reused by clicks, so it costs its own encoding.
    centred_px = math.floor((start_px + end_px) / 2.0 - window_px / 2.0 + 0.5)
    # Rounding to whole pixels may move an edge of the box out of the window, so shift
    # back. When both cannot fit, the start wins and the end overhangs by under a pixel.
    centred_px = min(max(centred_px, math.ceil(end_px) - window_px), math.floor(start_px))
    return centred_px, False


def mask_to_polygon_level0(
    mask_window: np.ndarray,
    window: PromptWindow,
    frame: WorkingFrame,
    bounds_level0: tuple[int, int, int, int],
    seed_window_px: tuple[int, int] | None = None,
) -> Polygon | None:
    """Trace one component of a window mask into a level-0 polygon on the slide.

    Mask pixels that lie outside the working frame (the reader's padding) are cleared
    first. The 4-connected component that contains the seed pixel is kept, or the largest
    one when there is no seed or the seed pixel is not in the mask. It is traced with its
    holes in pixel-edge coordinates, mapped to level-0 through ``frame`` and clipped to
    the slide bounds, because the last working pixel can reach past them by under one
    pixel.

    Args:
        mask_window: (window.size_px, window.size_px) mask, non-zero inside.
        window: The window that the mask covers.
        frame: Working frame of the slide at the segmenter's mpp.
        bounds_level0: Slide bounds as (x, y, w, h) in level-0 pixels.
        seed_window_px: (column, row) of a pixel in the window, such as the clicked one.

    Returns:
        The polygon, or None when nothing of the mask lies on the slide.
    """
    mask = np.asarray(mask_window, dtype=bool).copy()
    if mask.shape != (window.size_px, window.size_px):
        raise ValueError(
            f"mask_window has shape {mask.shape}, but the window needs "
            f"({window.size_px}, {window.size_px})."
        )
    # Clear the columns and rows of the window that lie outside the frame.
    mask[:, : max(0, -window.x_px)] = False
    mask[: max(0, -window.y_px), :] = False
    mask[:, max(0, frame.width_px - window.x_px) :] = False
    mask[max(0, frame.height_px - window.y_px) :, :] = False

    if seed_window_px is not None:
        column, row = seed_window_px
        if 0 <= row < mask.shape[0] and 0 <= column < mask.shape[1] and mask[row, column]:
            _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
            mask = labels == labels[row, column]
    component = largest_component_polygon(mask)
    if component.polygon is None:
        return None
    x_min_level0, y_min_level0, w_level0, h_level0 = bounds_level0
    polygon_level0 = shapely.clip_by_rect(
        polygon_px_to_level0(component.polygon, frame, window.as_tile()),
        x_min_level0, y_min_level0, x_min_level0 + w_level0, y_min_level0 + h_level0,
    )
    parts = sort_polygons(make_valid_polygons(polygon_level0))
    return parts[0] if parts else None


class PromptSegmenter:
    """Segments click and box prompts on slides with SAM, caching window embeddings.

    One instance serves the whole web process. A lock serialises all prompts, so a click
    waits while another thread runs the image encoder, and the counters stay exact.

    Usage::

        segmenter = PromptSegmenter(loaded_sam, mpp=1.0, window_px=1024, cache_size=8)
        result = segmenter.segment_point(slide, x_level0, y_level0)
        result = segmenter.segment_box(slide, (x0_level0, y0_level0, x1_level0, y1_level0))

    Cost: a cache miss reads one window and runs the image encoder once (the expensive
    part). A hit runs only the prompt encoder and mask decoder. Each cached embedding
    takes C x G x G float32 values on the model's device, 4 MiB for vit_b/l/h
    (256 x 64 x 64), so the default cache of 8 uses 32 MiB.
    """

    def __init__(
        self,
        model: Sam | LoadedSam,
        mpp: float = 1.0,
        window_px: int = DEFAULT_WINDOW_PX,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ):
        """Create a segmenter.

        Args:
            model: SAM in eval mode on the device to run on, or a LoadedSam.
            mpp: Working pixel size in µm/px at which windows are read.
            window_px: Side of a window in working pixels, even, in [16, 8192]. SAM
                resizes the window to its input size (1024 px for the official models).
            cache_size: Number of window embeddings kept, in [1, 1024].

        Raises:
            SettingsError: A value has the wrong type or is out of range.
        """
        sam = model.model if isinstance(model, LoadedSam) else model
        if not isinstance(sam, Sam):
            raise SettingsError(
                f"model must be a segment_anything Sam or a LoadedSam, got "
                f"{type(model).__name__}. Load one with ml.sam.load_sam."
            )
        if not _is_real(mpp) or not MPP_MIN <= mpp <= MPP_MAX:
            raise SettingsError(
                f"mpp must be a number of µm/px in [{MPP_MIN}, {MPP_MAX}], got {mpp!r}."
            )
        if not _is_integer(window_px) or not WINDOW_PX_MIN <= window_px <= WINDOW_PX_MAX:
            raise SettingsError(
                f"window_px must be a whole number of pixels in [{WINDOW_PX_MIN}, "
                f"{WINDOW_PX_MAX}], got {window_px!r}."
            )
        if window_px % 2:
            raise SettingsError(
                f"window_px must be even so that grid origins (multiples of window_px / 2) "
                f"are whole pixels, got {window_px}. Use {window_px + 1}."
            )
        if not _is_integer(cache_size) or not 1 <= cache_size <= CACHE_SIZE_MAX:
            raise SettingsError(
                f"cache_size must be a whole number of windows in [1, {CACHE_SIZE_MAX}], "
                f"got {cache_size!r}."
            )

        self._predictor = SamPredictor(sam)
        self._mpp = float(mpp)
        self._window_px = int(window_px)
        self._cache_size = int(cache_size)
        self._cache: OrderedDict[_WindowKey, _Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self._encoder_runs = 0

    @property
    def mpp(self) -> float:
        """Working pixel size in µm/px."""
        return self._mpp

    @property
    def window_px(self) -> int:
        """Window side in working pixels."""
        return self._window_px

    @property
    def encoder_runs(self) -> int:
        """Number of image encoder runs so far, one per cache miss."""
        return self._encoder_runs

    @property
    def cached_windows(self) -> int:
        """Number of window embeddings in the cache."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Drop every cached embedding, for example after the model's weights change."""
        with self._lock:
            self._cache.clear()

    def segment_point(self, slide: Slide, x_level0: float, y_level0: float) -> PromptResult:
        """Segment the object under a click with a positive point prompt.

        SAM returns three candidate masks. The one with the highest predicted IoU among
        those that contain the clicked pixel is kept, and its 4-connected component under
        the click becomes the polygon. When no mask contains the clicked pixel, the
        highest-scoring mask is kept, its largest component becomes the polygon and
        ``point_in_mask`` is False.

        Args:
            slide: The slide clicked on.
            x_level0: Click x in level-0 pixels, inside the slide bounds.
            y_level0: Click y in level-0 pixels, inside the slide bounds.

        Raises:
            SettingsError: A coordinate is not a finite number or lies outside the slide.
        """
        _check_inside_slide(slide, "x_level0", x_level0, "y_level0", y_level0)
        frame = slide.working_frame(self._mpp)
        x_px, y_px = frame.from_level0(float(x_level0), float(y_level0))
        window = window_for_box_px(x_px, y_px, x_px, y_px, self._window_px)
        x_window_px = x_px - window.x_px
        y_window_px = y_px - window.y_px

        masks, predicted_ious, cache_hit = self._predict(
            slide, frame, window,
            point_coords=np.array([[x_window_px, y_window_px]], dtype=np.float64),
            point_labels=np.array([1]),
            multimask_output=True,
        )
        # Clicks lie a quarter window inside the window, so the pixel index is in range.
        click_window_px = (math.floor(x_window_px), math.floor(y_window_px))
        contains_click = masks[:, click_window_px[1], click_window_px[0]]
        point_in_mask = bool(contains_click.any())
        scores = predicted_ious
        if point_in_mask:
            scores = np.where(contains_click, predicted_ious, -np.inf)
        chosen = int(np.argmax(scores))
        if not point_in_mask:
            logger.debug(
                "No SAM mask contains the click at (%.1f, %.1f) level-0 px on %s, so the "
                "highest-scoring mask was taken",
                x_level0, y_level0, slide.info.path.name,
            )
        return self._build_result(
            slide, frame, window, masks[chosen], float(predicted_ious[chosen]), cache_hit,
            point_in_mask, seed_window_px=click_window_px,
        )

    def segment_box(
        self, slide: Slide, box_level0_xyxy: Sequence[float]
    ) -> PromptResult:
        """Segment the object inside a dragged box with a single-mask box prompt.

        Args:
            slide: The slide the box was drawn on.
            box_level0_xyxy: (x0, y0, x1, y1) in level-0 pixels with x0 < x1 and y0 < y1,
                inside the slide bounds, at most one window (``window_px * mpp`` µm) wide
                and high.

        Raises:
            SettingsError: The box is malformed, not finite, outside the slide or larger
                than a window.
        """
        x0_level0, y0_level0, x1_level0, y1_level0 = self._check_box(slide, box_level0_xyxy)
        frame = slide.working_frame(self._mpp)
        x0_px, y0_px = frame.from_level0(x0_level0, y0_level0)
        x1_px, y1_px = frame.from_level0(x1_level0, y1_level0)
        window = window_for_box_px(x0_px, y0_px, x1_px, y1_px, self._window_px)
        if not window.on_grid:
            logger.debug(
                "Box %s on %s fits no grid window, so its window is centred on it at (%d, %d) px",
                box_level0_xyxy, slide.info.path.name, window.x_px, window.y_px,
            )

        box_window_px = np.array(
            [x0_px - window.x_px, y0_px - window.y_px, x1_px - window.x_px, y1_px - window.y_px]
        )
        # A full-window box may overhang the window by under a pixel (see window_for_box_px).
        box_window_px = np.clip(box_window_px, 0.0, float(window.size_px))
        masks, predicted_ious, cache_hit = self._predict(
            slide, frame, window, box=box_window_px, multimask_output=False
        )
        return self._build_result(
            slide, frame, window, masks[0], float(predicted_ious[0]), cache_hit, None
        )

    def _check_box(
        self, slide: Slide, box_level0_xyxy: Sequence[float]
    ) -> tuple[float, float, float, float]:
        """Return the box as four floats, or raise SettingsError naming what is wrong."""
        try:
            values = tuple(box_level0_xyxy)
        except TypeError:
            values = ()
        if len(values) != 4 or not all(_is_real(value) for value in values):
            raise SettingsError(
                f"box_level0_xyxy must be four finite numbers (x0, y0, x1, y1) in level-0 "
                f"pixels, got {box_level0_xyxy!r}."
            )
        x0_level0, y0_level0, x1_level0, y1_level0 = (float(value) for value in values)
        if not (x0_level0 < x1_level0 and y0_level0 < y1_level0):
            raise SettingsError(
                f"box_level0_xyxy must have x0 < x1 and y0 < y1, got {box_level0_xyxy!r}. "
                "Send the top-left corner first."
            )
        _check_inside_slide(slide, "x0", x0_level0, "y0", y0_level0, closed=True)
        _check_inside_slide(slide, "x1", x1_level0, "y1", y1_level0, closed=True)

        # The relative tolerance accepts a box of exactly one window after float rounding.
        max_level0 = self._window_px * self._mpp / slide.mpp * (1.0 + 1e-9)
        w_level0 = x1_level0 - x0_level0
        h_level0 = y1_level0 - y0_level0
        if w_level0 > max_level0 or h_level0 > max_level0:
            max_um = self._window_px * self._mpp
            raise SettingsError(
                f"box_level0_xyxy {box_level0_xyxy!r} is {w_level0 * slide.mpp:.1f} x "
                f"{h_level0 * slide.mpp:.1f} µm, but a box may be at most {max_um:g} x "
                f"{max_um:g} µm (one window of {self._window_px} px at {self._mpp:g} µm/px). "
                "Draw a smaller box or use a click."
            )
        return x0_level0, y0_level0, x1_level0, y1_level0

    def _predict(
        self, slide: Slide, frame: WorkingFrame, window: PromptWindow, **prompt
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Run SAM's predictor on one window, encoding the window only on a cache miss.

        Returns:
            (C, H, W) bool masks at the window size, (C,) predicted IoUs, and whether the
            embedding came from the cache.
        """
        key = _WindowKey(
            slide_path=str(slide.info.path.resolve()),
            slide_mpp=slide.mpp,
            mpp=self._mpp,
            x_px=window.x_px,
            y_px=window.y_px,
        )
        with self._lock:
            embedding = self._cache.get(key)
            cache_hit = embedding is not None
            if embedding is None:
                embedding = self._encode(slide, frame, window)
                self._cache[key] = embedding
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)

            # SamPredictor.predict reads these attributes, which set_image fills.
            self._predictor.features = embedding.features
            self._predictor.original_size = embedding.original_size
            self._predictor.input_size = embedding.input_size
            self._predictor.is_image_set = True
            masks, predicted_ious, _ = self._predictor.predict(**prompt)

        logger.debug(
            "Prompt on %s in window (%d, %d) px at %g µm/px: cache %s, %d encoder runs",
            slide.info.path.name, window.x_px, window.y_px, self._mpp,
            "hit" if cache_hit else "miss", self._encoder_runs,
        )
        return masks, predicted_ious, cache_hit

    def _encode(self, slide: Slide, frame: WorkingFrame, window: PromptWindow) -> _Embedding:
        """Read one window and run the image encoder on it. The caller must own the lock."""
        rgb = frame.read(slide, window.x_px, window.y_px, window.size_px, window.size_px)
        self._predictor.set_image(rgb)
        self._encoder_runs += 1
        return _Embedding(
            features=self._predictor.features,
            original_size=tuple(self._predictor.original_size),
            input_size=tuple(self._predictor.input_size),
        )

    def _build_result(
        self,
        slide: Slide,
        frame: WorkingFrame,
        window: PromptWindow,
        mask_window: np.ndarray,
        predicted_iou: float,
        cache_hit: bool,
        point_in_mask: bool | None,
        seed_window_px: tuple[int, int] | None = None,
    ) -> PromptResult:
        window_origin_level0 = PointLevel0(*frame.to_level0(window.x_px, window.y_px))
        polygon_level0 = mask_to_polygon_level0(
            mask_window, window, frame, slide.info.bounds_level0, seed_window_px
        )
        if polygon_level0 is None:
            reason = (
                "SAM's mask for this prompt is empty on the slide. Try a click nearer the "
                "object's centre or a box around it."
            )
            return PromptResult(
                polygon_level0=None,
                predicted_iou=predicted_iou,
                window_origin_level0=window_origin_level0,
                cache_hit=cache_hit,
                mask_area_um2=0.0,
                point_in_mask=point_in_mask,
                reason=reason,
            )
        return PromptResult(
            polygon_level0=polygon_level0,
            predicted_iou=predicted_iou,
            window_origin_level0=window_origin_level0,
            cache_hit=cache_hit,
            mask_area_um2=polygon_level0.area * slide.mpp**2,
            point_in_mask=point_in_mask,
        )


def _is_real(value: object) -> bool:
    """Return whether a value is a finite real number (bool excluded)."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_inside_slide(
    slide: Slide, x_name: str, x_level0: float, y_name: str, y_level0: float,
    *, closed: bool = False,
) -> None:
    """Raise SettingsError unless (x, y) is a finite level-0 position inside the bounds.

    Points use half-open bounds [x, x + w), because a click names a pixel. Box corners use
    closed bounds [x, x + w], because a box may end on the slide's last pixel edge.
    """
    for name, value in ((x_name, x_level0), (y_name, y_level0)):
        if not _is_real(value):
            raise SettingsError(
                f"{name} must be a finite number of level-0 pixels, got {value!r}. "
                "Send the prompt position as a number."
            )
    bounds_x, bounds_y, bounds_w, bounds_h = slide.info.bounds_level0
    for name, value, low, size in (
        (x_name, x_level0, bounds_x, bounds_w),
        (y_name, y_level0, bounds_y, bounds_h),
    ):
        high = low + size
        inside = low <= value <= high if closed else low <= value < high
        if not inside:
            interval = f"[{low}, {high}]" if closed else f"[{low}, {high})"
            raise SettingsError(
                f"{name}={value!r} is outside the slide: it must be in {interval} level-0 px "
                f"for {slide.info.path.name} ({slide.width_px} x {slide.height_px} px). "
                "Prompt inside the slide."
            )
