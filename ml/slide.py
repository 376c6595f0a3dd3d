"""Whole-slide image access by pixel size (mpp), with one level-0 <-> working-grid mapping.

Coordinate planes used here and by every caller:

- level-0 pixels (``*_level0``): the slide's full-resolution grid, x to the right and y
  down from the slide's top-left corner. Stored polygons live in this plane.
- working pixels (``*_px``): the grid of a :class:`WorkingFrame` at a chosen mpp, whose
  origin is the top-left corner of the slide bounds. Tiles and SAM masks live here.

Resolution is always chosen by mpp (microns per pixel), never by a pyramid level index.
Usage::

    with open_slide("biopsy.svs") as slide:
        frame = slide.working_frame(mpp=1.0)
        rgb = frame.read(slide, x_px=0, y_px=0, w_px=1024, h_px=1024)  # (1024, 1024, 3)
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import openslide
from PIL import Image

from ml.errors import SlideError

logger = logging.getLogger(__name__)

MPP_MIN = 0.05
MPP_MAX = 20.0
# x and y pixel sizes that differ by more than this fraction mean non-square pixels.
MPP_XY_MAX_RELATIVE_DIFFERENCE = 0.01
# A level whose mpp is at most this fraction coarser than the target still counts as
# matching, because level sizes rounded to whole pixels make downsamples like 2.0004.
LEVEL_MPP_TOLERANCE = 1e-3
# One OpenSlide read covers at most this many level pixels per side (64 MiB of RGBA),
# so a coarse read of a single-level slide is done in chunks.
MAX_READ_SIDE_PX = 4096

GIVE_MPP_HINT = "--mpp on the command line, or 'Microns per pixel' in the upload form"
# Only these suffixes may fall back to Pillow when OpenSlide does not recognise the file:
# a whole-slide format that OpenSlide rejects is damaged, not a plain image.
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
# A plain image is decoded whole into memory as RGBA, 4 bytes per pixel: 256 MiB at
# 8192² px. A 16 000² px PNG of 775 KB raised a web process's memory by 2 GB, which it
# kept after the slide was deleted. The header is checked first, because a few KB of PNG
# can declare far more pixels, and large_image 1.35.6 sets Pillow's
# Image.MAX_IMAGE_PIXELS to None. Whole slides come as tiled pyramidal files instead.
MAX_PLAIN_IMAGE_PIXELS = 8192 * 8192
READABLE_FORMATS = (
    "Aperio SVS, Hamamatsu NDPI/VMS, MIRAX MRXS, Leica SCN, Ventana BIF, Philips TIFF, "
    "DICOM WSI, tiled pyramidal TIFF, and PNG/JPEG/TIFF images when mpp is given"
)


class PointLevel0(NamedTuple):
    """A position in level-0 pixels, which unpacks as ``(x_level0, y_level0)``."""

    x_level0: float
    y_level0: float


class PointPx(NamedTuple):
    """A position in working pixels of a WorkingFrame, which unpacks as ``(x_px, y_px)``."""

    x_px: float
    y_px: float


@dataclass(frozen=True)
class SlideInfo:
    """Metadata of an opened slide.

    Attributes:
        path: The slide file.
        width_px: Level-0 width in pixels.
        height_px: Level-0 height in pixels.
        mpp: Level-0 pixel size in µm/px (square pixels).
        mpp_source: "given", "slide properties" or "TIFF resolution tags".
        vendor: OpenSlide's vendor name (e.g. "aperio"), or "image" for PNG/JPEG/plain TIFF.
        bounds_level0: (x, y, w, h) of the scanned area in level-0 pixels, or the whole
            slide when the file does not record bounds.
        level_downsamples: OpenSlide's level-0 downsample of each level, level 0 first.
        background_rgb: Colour shown where the slide has no pixels, (r, g, b) in 0..255.
    """

    path: Path
    width_px: int
    height_px: int
    mpp: float
    mpp_source: str
    vendor: str
    bounds_level0: tuple[int, int, int, int]
    level_downsamples: tuple[float, ...]
    background_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class WorkingFrame:
    """The pixel grid of a slide at a working mpp, and the one level-0 <-> working mapping.

    Working pixel (0, 0) starts at the top-left corner of the slide bounds, and one working
    pixel spans ``scale_level0_per_px`` level-0 pixels. The methods accept scalars or
    numpy arrays of coordinates.

    Attributes:
        mpp: Working pixel size in µm/px.
        origin_x_level0: Level-0 x of working pixel x = 0.
        origin_y_level0: Level-0 y of working pixel y = 0.
        scale_level0_per_px: Level-0 pixels per working pixel (working mpp / slide mpp).
        width_px: Width of the bounds in working pixels, rounded up.
        height_px: Height of the bounds in working pixels, rounded up.
    """

    mpp: float
    origin_x_level0: float
    origin_y_level0: float
    scale_level0_per_px: float
    width_px: int
    height_px: int

    def to_level0(self, x_px, y_px) -> PointLevel0:
        """Convert a working-pixel position to level-0 pixels."""
        return PointLevel0(
            self.origin_x_level0 + x_px * self.scale_level0_per_px,
            self.origin_y_level0 + y_px * self.scale_level0_per_px,
        )

    def from_level0(self, x_level0, y_level0) -> PointPx:
        """Convert a level-0 position to working pixels."""
        return PointPx(
            (x_level0 - self.origin_x_level0) / self.scale_level0_per_px,
            (y_level0 - self.origin_y_level0) / self.scale_level0_per_px,
        )

    def read(self, slide: Slide, x_px: float, y_px: float, w_px: int, h_px: int) -> np.ndarray:
        """Read a (h_px, w_px, 3) uint8 RGB region whose top-left is (x_px, y_px) in this frame.

        Raises:
            SlideError: The frame was made for a slide with another mpp.
        """
        expected_scale = self.mpp / slide.mpp
        if not math.isclose(self.scale_level0_per_px, expected_scale, rel_tol=1e-9):
            raise SlideError(
                f"{slide.info.path}: this working frame has {self.scale_level0_per_px} level-0 "
                f"px per working px but the slide needs {expected_scale}. Make the frame with "
                "slide.working_frame(mpp) of the same slide."
            )
        x_level0, y_level0 = self.to_level0(x_px, y_px)
        return slide.read_region(x_level0, y_level0, w_px, h_px, self.mpp)


@dataclass(frozen=True, eq=False)
class Thumbnail:
    """An RGB image of the whole slide bounds at a coarse mpp.

    Attributes:
        rgb: (H, W, 3) uint8 image with H = frame.height_px and W = frame.width_px.
        frame: The working frame of the image, for converting its pixels to level-0.
    """

    rgb: np.ndarray
    frame: WorkingFrame

    @property
    def mpp(self) -> float:
        """Pixel size of the thumbnail in µm/px."""
        return self.frame.mpp


class Slide:
    """An opened slide file, read by mpp with :meth:`read_region` or a WorkingFrame.

    Use :func:`open_slide` to make one, and close it (or use ``with``) when done. Open one
    Slide per process rather than sharing one across forked workers.
    """

    def __init__(self, handle: openslide.AbstractSlide, info: SlideInfo):
        self._handle = handle
        self.info = info

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.info.path)!r}, mpp={self.info.mpp})"

    def close(self) -> None:
        """Release the file handle. Reading afterwards raises an error."""
        self._handle.close()

    @property
    def width_px(self) -> int:
        """Level-0 width in pixels."""
        return self.info.width_px

    @property
    def height_px(self) -> int:
        """Level-0 height in pixels."""
        return self.info.height_px

    @property
    def mpp(self) -> float:
        """Level-0 pixel size in µm/px."""
        return self.info.mpp

    def level_for_mpp(self, mpp: float) -> int:
        """Return the pyramid level to read for a target mpp.

        That is the level with the largest downsample whose mpp is still at most the target
        (within LEVEL_MPP_TOLERANCE), so pixels are only ever shrunk. A target finer than
        level 0 returns level 0.
        """
        chosen = 0
        for level, downsample in enumerate(self.info.level_downsamples):
            if self.mpp * downsample <= mpp * (1.0 + LEVEL_MPP_TOLERANCE):
                if downsample > self.info.level_downsamples[chosen]:
                    chosen = level
        return chosen

    def working_frame(self, mpp: float) -> WorkingFrame:
        """Make the working grid at ``mpp`` µm/px over the slide bounds."""
        self._validate_target_mpp(mpp)
        bounds_x, bounds_y, bounds_w, bounds_h = self.info.bounds_level0
        scale = mpp / self.mpp
        # The small subtraction keeps float noise such as 2048.0000000002 from adding a pixel.
        return WorkingFrame(
            mpp=float(mpp),
            origin_x_level0=float(bounds_x),
            origin_y_level0=float(bounds_y),
            scale_level0_per_px=scale,
            width_px=max(1, math.ceil(bounds_w / scale - 1e-6)),
            height_px=max(1, math.ceil(bounds_h / scale - 1e-6)),
        )

    def thumbnail_rgb(self, max_px: int = 2048) -> Thumbnail:
        """Read the slide bounds at the mpp that makes their long side at most ``max_px``.

        The thumbnail is never finer than level 0. Its frame converts thumbnail pixels to
        level-0.
        """
        if max_px < 1:
            raise SlideError(f"{self.info.path}: thumbnail max_px must be >= 1, got {max_px}.")
        long_side_level0 = max(self.info.bounds_level0[2], self.info.bounds_level0[3])
        mpp = max(self.mpp, long_side_level0 * self.mpp / max_px)
        frame = self.working_frame(mpp)
        rgb = frame.read(self, 0, 0, frame.width_px, frame.height_px)
        return Thumbnail(rgb=rgb, frame=frame)

    def read_region(
        self, x_level0: float, y_level0: float, w_px: int, h_px: int, mpp: float
    ) -> np.ndarray:
        """Read a region sampled at ``mpp`` as a (h_px, w_px, 3) uint8 RGB array.

        The region's top-left is (x_level0, y_level0) in level-0 pixels, and it spans
        ``w_px * mpp / slide.mpp`` level-0 pixels across. The pixels come from the level
        chosen by :meth:`level_for_mpp` and are resized with area averaging when shrinking.
        The region's edges are rounded to whole pixels of that level, so positions are
        exact to half a level pixel (at most half an output pixel). Areas outside the slide
        and transparent pixels are blended onto the slide's background colour by alpha.
        """
        self._validate_target_mpp(mpp)
        if int(w_px) != w_px or int(h_px) != h_px or w_px < 1 or h_px < 1:
            raise SlideError(
                f"{self.info.path}: region size must be whole pixels >= 1, got "
                f"w_px={w_px}, h_px={h_px}."
            )
        w_px, h_px = int(w_px), int(h_px)
        level = self.level_for_mpp(mpp)
        downsample = self.info.level_downsamples[level]
        level_px_per_out_px = (mpp / self.mpp) / downsample
        logger.debug(
            "read_region %s: %dx%d px at %.4g mpp from level %d (downsample %.4g)",
            self.info.path.name, w_px, h_px, mpp, level, downsample,
        )

        # Split big coarse reads (e.g. a thumbnail of a single-level slide) into chunks
        # whose level-space size stays below MAX_READ_SIDE_PX.
        chunk_px = max(1, math.floor(MAX_READ_SIDE_PX / level_px_per_out_px))
        if w_px <= chunk_px and h_px <= chunk_px:
            return self._read_block(x_level0, y_level0, w_px, h_px, level, level_px_per_out_px)
        out = np.empty((h_px, w_px, 3), dtype=np.uint8)
        scale = mpp / self.mpp
        for y_px in range(0, h_px, chunk_px):
            for x_px in range(0, w_px, chunk_px):
                chunk_w_px = min(chunk_px, w_px - x_px)
                chunk_h_px = min(chunk_px, h_px - y_px)
                out[y_px : y_px + chunk_h_px, x_px : x_px + chunk_w_px] = self._read_block(
                    x_level0 + x_px * scale, y_level0 + y_px * scale,
                    chunk_w_px, chunk_h_px, level, level_px_per_out_px,
                )
        return out

    def _read_block(
        self, x_level0: float, y_level0: float, w_px: int, h_px: int,
        level: int, level_px_per_out_px: float,
    ) -> np.ndarray:
        downsample = self.info.level_downsamples[level]
        # Round both edges (not the size) so neighbouring blocks share their edges.
        x_start_level = round(x_level0 / downsample)
        y_start_level = round(y_level0 / downsample)
        x_end_level = round(x_level0 / downsample + w_px * level_px_per_out_px)
        y_end_level = round(y_level0 / downsample + h_px * level_px_per_out_px)
        w_level = max(1, x_end_level - x_start_level)
        h_level = max(1, y_end_level - y_start_level)
        location_level0 = (round(x_start_level * downsample), round(y_start_level * downsample))
        try:
            rgba = np.asarray(self._handle.read_region(location_level0, level, (w_level, h_level)))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"{self.info.path}: OpenSlide failed to read level {level} at "
                f"{location_level0}: {exc}. The file may be truncated or corrupt, "
                "so re-export or re-copy it."
            ) from exc

        rgb = _blend_on_background(rgba, self.info.background_rgb)
        if (w_level, h_level) == (w_px, h_px):
            return rgb
        shrinking = w_level >= w_px and h_level >= h_px
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return cv2.resize(rgb, (w_px, h_px), interpolation=interpolation)

    def _validate_target_mpp(self, mpp: float) -> None:
        if not (isinstance(mpp, numbers.Real) and math.isfinite(mpp) and mpp > 0):
            raise SlideError(
                f"{self.info.path}: target mpp must be a positive number of µm/px, got {mpp!r}."
            )


def _blend_on_background(rgba: np.ndarray, background_rgb: tuple[int, int, int]) -> np.ndarray:
    """Blend (H, W, 4) uint8 straight-alpha RGBA onto a colour, giving (H, W, 3) uint8 RGB."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    if np.all(alpha == 255):
        return np.ascontiguousarray(rgba[..., :3])
    background = np.asarray(background_rgb, dtype=np.uint16)
    blended = (rgba[..., :3].astype(np.uint16) * alpha + background * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image, or a PNG/JPEG/plain TIFF image when its mpp is known.

    The pixel size comes from, in order: the ``mpp`` argument, the slide's
    ``openslide.mpp-x/y`` properties, then the TIFF resolution tags. No pixel size is
    ever assumed.

    Args:
        path: The slide file.
        mpp: Level-0 pixel size in µm/px. It overrides what the file records.

    Raises:
        SlideError: The file is missing or unreadable, has no pixel size, or its pixel
            size is outside 0.05..20 µm/px or differs between x and y by more than 1%.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"Slide file not found: {path}. Check the path and that the file exists.")

    handle, vendor, properties = _open_handle(path)
    try:
        info = _build_info(path, handle, vendor, properties, mpp)
    except BaseException:
        handle.close()
        raise
    logger.info(
        "Opened %s: %dx%d px, mpp %.4g (%s), vendor %s, %d levels",
        path, info.width_px, info.height_px, info.mpp, info.mpp_source, info.vendor,
        len(info.level_downsamples),
    )
    return Slide(handle, info)


def _open_handle(path: Path) -> tuple[openslide.AbstractSlide, str, dict[str, str]]:
    """Open with OpenSlide, or with Pillow for plain images, and return the properties too."""
    try:
        handle = openslide.OpenSlide(path)
        return handle, handle.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"), dict(
            handle.properties
        )
    except openslide.OpenSlideUnsupportedFormatError as exc:
        if path.suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
            raise _unreadable(path, exc) from exc
        # Not a whole-slide format, but a plain image may still open below.
    except openslide.OpenSlideError as exc:
        raise _unreadable(path, exc) from exc

    try:
        with Image.open(path) as image:
            _check_plain_image_size(path, image)
            image.load()
            properties = _pil_tiff_resolution_properties(image)
            rgba = _pil_to_rgba(path, image)
    except Image.DecompressionBombError as exc:
        # Pillow's own limit, when large_image has not switched it off in this process.
        raise _too_large(path, str(exc)) from exc
    except (OSError, SyntaxError) as exc:
        raise _unreadable(path, exc) from exc
    return openslide.ImageSlide(rgba), "image", properties


def _unreadable(path: Path, exc: Exception) -> SlideError:
    return SlideError(
        f"{path}: OpenSlide cannot read this file ({exc}). It may be truncated, corrupt "
        f"or a variant OpenSlide does not support. Readable formats: {READABLE_FORMATS}."
    )


def _check_plain_image_size(path: Path, image: Image.Image) -> None:
    width_px, height_px = image.size
    if width_px * height_px > MAX_PLAIN_IMAGE_PIXELS:
        raise _too_large(path, f"{width_px} x {height_px} px")


def _too_large(path: Path, size: str) -> SlideError:
    return SlideError(
        f"{path}: this plain image ({size}) is too large to decode into memory, which "
        f"allows at most {MAX_PLAIN_IMAGE_PIXELS:,} px. Convert it to a tiled pyramidal "
        "TIFF, e.g. with `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`, "
        "and import that."
    )


def _pil_to_rgba(path: Path, image: Image.Image) -> Image.Image:
    if image.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"):
        return image.convert("RGBA")
    raise SlideError(
        f"{path}: image mode {image.mode!r} (e.g. 16-bit or float) is not supported. "
        "Export the image as 8-bit RGB."
    )


def _pil_tiff_resolution_properties(image: Image.Image) -> dict[str, str]:
    """Return a plain TIFF's resolution tags under OpenSlide's ``tiff.*`` property names."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or 282 not in tags or 283 not in tags:
        return {}
    units = {1: "none", 2: "inch", 3: "centimeter"}
    return {
        "tiff.XResolution": str(float(tags[282])),
        "tiff.YResolution": str(float(tags[283])),
        "tiff.ResolutionUnit": units.get(int(tags.get(296, 2)), "none"),
    }


def _build_info(
    path: Path,
    handle: openslide.AbstractSlide,
    vendor: str,
    properties: dict[str, str],
    given_mpp: float | None,
) -> SlideInfo:
    mpp, mpp_source = _resolve_mpp(path, properties, given_mpp)
    width_px, height_px = handle.dimensions
    return SlideInfo(
        path=path,
        width_px=int(width_px),
        height_px=int(height_px),
        mpp=mpp,
        mpp_source=mpp_source,
        vendor=vendor,
        bounds_level0=_bounds_level0(properties, width_px, height_px),
        level_downsamples=tuple(float(d) for d in handle.level_downsamples),
        background_rgb=_background_rgb(properties),
    )


def _resolve_mpp(
    path: Path, properties: dict[str, str], given_mpp: float | None
) -> tuple[float, str]:
    if given_mpp is not None:
        _validate_mpp_range(path, float(given_mpp), "the mpp argument")
        return float(given_mpp), "given"

    candidates = [
        ("slide properties", _mpp_from_openslide(properties)),
        ("TIFF resolution tags", _mpp_from_tiff_tags(properties)),
    ]
    for source, mpp_xy in candidates:
        if mpp_xy is None:
            continue
        mpp_x, mpp_y = mpp_xy
        _validate_mpp_range(path, mpp_x, source)
        _validate_mpp_range(path, mpp_y, source)
        if abs(mpp_x - mpp_y) > MPP_XY_MAX_RELATIVE_DIFFERENCE * max(mpp_x, mpp_y):
            raise SlideError(
                f"{path}: the {source} give different pixel sizes in x ({mpp_x:.6g} µm/px) "
                f"and y ({mpp_y:.6g} µm/px), and non-square pixels are not supported. Resample "
                f"the slide to square pixels, or give the true mpp ({GIVE_MPP_HINT}) if the "
                "tags are wrong."
            )
        return (mpp_x + mpp_y) / 2.0, source

    raise SlideError(
        f"{path} has no pixel size (mpp) in its properties or TIFF resolution tags. "
        "Give it in µm per level-0 pixel (e.g. 0.25 for 40x or 0.5 for 20x) with "
        f"{GIVE_MPP_HINT}."
    )


def _mpp_from_openslide(properties: dict[str, str]) -> tuple[float, float] | None:
    try:
        return (
            float(properties[openslide.PROPERTY_NAME_MPP_X]),
            float(properties[openslide.PROPERTY_NAME_MPP_Y]),
        )
    except (KeyError, ValueError):
        return None


def _mpp_from_tiff_tags(properties: dict[str, str]) -> tuple[float, float] | None:
    microns_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(
        properties.get("tiff.ResolutionUnit", "")
    )
    try:
        x_resolution = float(properties["tiff.XResolution"])
        y_resolution = float(properties["tiff.YResolution"])
    except (KeyError, ValueError):
        return None
    if microns_per_unit is None or x_resolution <= 0 or y_resolution <= 0:
        return None
    return microns_per_unit / x_resolution, microns_per_unit / y_resolution


def _validate_mpp_range(path: Path, mpp: float, source: str) -> None:
    if math.isfinite(mpp) and MPP_MIN <= mpp <= MPP_MAX:
        return
    raise SlideError(
        f"{path}: the pixel size {mpp:.6g} µm/px from {source} is outside the plausible "
        f"range {MPP_MIN}..{MPP_MAX} µm/px (a default 72 dpi tag gives 352.8). Give the "
        f"true pixel size with {GIVE_MPP_HINT}."
    )


def _bounds_level0(
    properties: dict[str, str], width_px: int, height_px: int
) -> tuple[int, int, int, int]:
    names = (
        openslide.PROPERTY_NAME_BOUNDS_X,
        openslide.PROPERTY_NAME_BOUNDS_Y,
        openslide.PROPERTY_NAME_BOUNDS_WIDTH,
        openslide.PROPERTY_NAME_BOUNDS_HEIGHT,
    )
    try:
        x, y, w, h = (int(properties[name]) for name in names)
    except (KeyError, ValueError):
        return (0, 0, int(width_px), int(height_px))
    if w <= 0 or h <= 0:
        return (0, 0, int(width_px), int(height_px))
    return (x, y, w, h)


def _background_rgb(properties: dict[str, str]) -> tuple[int, int, int]:
    value = properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "")
    try:
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    except ValueError:
        return (255, 255, 255)
