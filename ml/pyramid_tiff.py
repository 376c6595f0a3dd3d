"""Tiled pyramidal generic TIFF files that OpenSlide opens and reads the mpp of.

The layout is what OpenSlide's generic-tiff reader accepts. Every level is a tiled IFD
(256 px tiles, deflate), level 0 first and each next level half the size of the one
before. X/Y resolution tags in centimetres carry the mpp of each level.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ml.errors import SettingsError

logger = logging.getLogger(__name__)

TILE_PX = 256
# Levels are halved until the next one would have a side below this.
MIN_LEVEL_SIDE_PX = 256


def write_pyramidal_tiff(path: str | Path, image_rgb: np.ndarray, mpp: float) -> int:
    """Write ``image_rgb`` and its halvings as a pyramidal TIFF, and return the level count.

    The file is written to a temporary name in the same folder and then renamed, so a
    reader never sees a half-written file. An existing file at ``path`` is replaced.
    Levels below 0 are area-averaged halvings (cv2.INTER_AREA), made until the next level
    would have a side below ``MIN_LEVEL_SIDE_PX``.

    Args:
        path: Output file, usually ``.tif`` or ``.tiff``.
        image_rgb: (H, W, 3) uint8 level-0 image.
        mpp: Level-0 pixel size in µm/px, greater than 0.

    Raises:
        SettingsError: The image is not (H, W, 3) uint8 of a usable size, or mpp is not a
            positive finite number.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise SettingsError(
            f"Pyramidal TIFF image must be an (H, W, 3) uint8 RGB array, got shape "
            f"{image_rgb.shape} and dtype {image_rgb.dtype}."
        )
    height_px, width_px = image_rgb.shape[:2]
    if width_px < 1 or height_px < 1:
        raise SettingsError(
            f"Pyramidal TIFF image must be at least 1 x 1 px, got {width_px} x {height_px}."
        )
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0 < mpp < float("inf"):
        raise SettingsError(
            f"Pyramidal TIFF mpp must be a positive number of µm per pixel, got {mpp!r}."
        )

    path = Path(path)
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".partial", dir=path.parent
    )
    os.close(handle)
    temporary_path = Path(temporary_name)
    try:
        level_count = _write_levels(temporary_path, image_rgb, float(mpp))
        os.replace(temporary_path, path)
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    logger.debug(
        "Wrote pyramidal TIFF %s: %d x %d px at %g µm/px, %d levels",
        path, width_px, height_px, mpp, level_count,
    )
    return level_count


def _write_levels(path: Path, image_rgb: np.ndarray, mpp: float) -> int:
    """Write level 0 and its halvings as tiled IFDs, and return the level count."""
    level_count = 0
    with tifffile.TiffWriter(path, bigtiff=image_rgb.nbytes > 2**31) as writer:
        level = image_rgb
        downsample = 1
        while True:
            write_level(writer, level, mpp=mpp, downsample=downsample, maxworkers=4)
            level_count += 1
            height_px, width_px = level.shape[:2]
            if min(width_px, height_px) // 2 < MIN_LEVEL_SIDE_PX:
                return level_count
            level = cv2.resize(
                level, (width_px // 2, height_px // 2), interpolation=cv2.INTER_AREA
            )
            downsample *= 2


def write_level(writer: tifffile.TiffWriter, data, *, mpp: float, downsample: int, **options) -> None:
    """Write one pyramid level as a tiled RGB IFD with the resolution tags OpenSlide reads.

    ``data`` is an (H, W, 3) uint8 array, or an iterator of (TILE_PX, TILE_PX, 3) tiles
    row by row with ``shape`` and ``dtype`` in ``options``. Level 0 is marked as the full
    image and the others as reduced ones.
    """
    pixels_per_cm = 1e4 / (mpp * downsample)
    writer.write(
        data,
        tile=(TILE_PX, TILE_PX),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        resolution=(pixels_per_cm, pixels_per_cm),
        resolutionunit="CENTIMETER",
        subfiletype=0 if downsample == 1 else 1,
        metadata=None,
        **options,
    )
