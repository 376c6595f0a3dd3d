"""Test helpers that write small pyramidal TIFF slides with a known mpp and known content.

Levels are successive tiled IFDs, each half the size of the one before, so OpenSlide
opens the files with its generic-tiff reader and reports the mpp from the resolution tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

TILE_PX = 256
WHITE = (255, 255, 255)


def pyramid_levels(level0: np.ndarray, level_count: int) -> list[np.ndarray]:
    """Return level 0 and ``level_count - 1`` halvings of an (H, W, C) uint8 image."""
    levels = [level0]
    for _ in range(level_count - 1):
        previous = levels[-1]
        size_wh = (max(1, previous.shape[1] // 2), max(1, previous.shape[0] // 2))
        halved = cv2.resize(previous, size_wh, interpolation=cv2.INTER_AREA)
        levels.append(halved.reshape(size_wh[1], size_wh[0], previous.shape[2]))
    return levels


def write_pyramid_tiff(
    path: Path,
    level0: np.ndarray,
    mpp: float | None,
    level_count: int = 3,
    resolution_unit: str = "CENTIMETER",
    mpp_y: float | None = None,
) -> Path:
    """Write an (H, W, 3) RGB or (H, W, 4) RGBA uint8 image as a tiled deflate pyramid.

    Args:
        path: Output file.
        level0: The full-resolution image.
        mpp: Level-0 pixel size in µm/px written to the resolution tags. None writes no
            resolution unit, so the file has no pixel size.
        level_count: Number of pyramid levels.
        resolution_unit: "CENTIMETER" or "INCH".
        mpp_y: A different y pixel size, for non-square pixel tests.
    """
    extra = {"extrasamples": ["unassalpha"]} if level0.shape[2] == 4 else {}
    with tifffile.TiffWriter(path) as writer:
        for level, image in enumerate(pyramid_levels(level0, level_count)):
            writer.write(
                image,
                tile=(TILE_PX, TILE_PX),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                subfiletype=0 if level == 0 else 1,
                **_resolution_args(mpp, mpp_y, resolution_unit, 2**level),
                **extra,
            )
    return path


def write_plain_tiff(path: Path, rgb: np.ndarray, mpp: float | None) -> Path:
    """Write a stripped (not tiled) RGB TIFF, which OpenSlide does not read as a slide."""
    tifffile.imwrite(
        path, rgb, photometric="rgb", metadata=None,
        **_resolution_args(mpp, None, "CENTIMETER", 1),
    )
    return path


def _resolution_args(
    mpp: float | None, mpp_y: float | None, unit: str, downsample: int
) -> dict:
    if mpp is None:
        return {"resolution": (1, 1), "resolutionunit": "NONE"}
    microns_per_unit = {"CENTIMETER": 1e4, "INCH": 25400.0}[unit]
    mpp_y = mpp if mpp_y is None else mpp_y
    return {
        "resolution": (
            microns_per_unit / (mpp * downsample),
            microns_per_unit / (mpp_y * downsample),
        ),
        "resolutionunit": unit,
    }


def squares_image(
    size_wh: tuple[int, int],
    squares: list[tuple[int, int, int, tuple[int, int, int]]],
    background_rgb: tuple[int, int, int] = WHITE,
) -> np.ndarray:
    """Return an (H, W, 3) image of flat squares given as (x, y, side, rgb) in pixels."""
    width, height = size_wh
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background_rgb
    for x, y, side, rgb in squares:
        image[y : y + side, x : x + side] = rgb
    return image


def write_sparse_wide_tiff(
    path: Path,
    size_wh: tuple[int, int],
    mpp: float,
    squares: list[tuple[int, int, int, tuple[int, int, int]]],
    level_count: int = 4,
) -> Path:
    """Write a large white pyramid with a few flat squares, tile by tile, without the full image.

    Square positions and sides (level-0 pixels) must be multiples of
    ``2 ** (level_count - 1)`` so every level shows them with exact edges.
    """
    width, height = size_wh
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        for level in range(level_count):
            downsample = 2**level
            level_width, level_height = width // downsample, height // downsample
            level_squares = [
                (x // downsample, y // downsample, side // downsample, rgb)
                for x, y, side, rgb in squares
            ]
            writer.write(
                _tiles(level_width, level_height, lambda box: _paint(box, level_squares)),
                shape=(level_height, level_width, 3),
                dtype=np.uint8,
                tile=(TILE_PX, TILE_PX),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                subfiletype=0 if level == 0 else 1,
                **_resolution_args(mpp, None, "CENTIMETER", downsample),
            )
    return path


def _tiles(
    width: int, height: int, paint: Callable[[tuple[int, int]], np.ndarray]
) -> Iterator[np.ndarray]:
    for y in range(0, height, TILE_PX):
        for x in range(0, width, TILE_PX):
            yield paint((x, y))


def _paint(
    tile_origin: tuple[int, int], squares: list[tuple[int, int, int, tuple[int, int, int]]]
) -> np.ndarray:
    tile_x, tile_y = tile_origin
    tile = np.full((TILE_PX, TILE_PX, 3), 255, dtype=np.uint8)
    for x, y, side, rgb in squares:
        x0, x1 = max(x, tile_x), min(x + side, tile_x + TILE_PX)
        y0, y1 = max(y, tile_y), min(y + side, tile_y + TILE_PX)
        if x0 < x1 and y0 < y1:
            tile[y0 - tile_y : y1 - tile_y, x0 - tile_x : x1 - tile_x] = rgb
    return tile
