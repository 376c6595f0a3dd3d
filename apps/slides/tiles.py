"""Deep-zoom tiles and thumbnails through large-image, which caches tiles and handles.

Deep-zoom level ``z`` follows large-image: z = levels - 1 is full resolution and each
level below halves it, tiles are ``tile_px`` square in that level's pixels.
"""

import logging

from pathlib import Path

import large_image
from django.conf import settings

from ml.errors import SlideError

logger = logging.getLogger(__name__)

_configured = False


def configure_cache():
    """Give large-image its tile cache: a Redis of its own if configured, else in-process."""
    global _configured
    if _configured:
        return
    if settings.NEPHROWEB_TILE_CACHE_URL:
        large_image.config.setConfig("cache_backend", "redis")
        large_image.config.setConfig("cache_redis_url", settings.NEPHROWEB_TILE_CACHE_URL)
    else:
        large_image.config.setConfig("cache_backend", "python")
    _configured = True


class SlideFileMissing(SlideError):
    """The slide's file is gone or unreadable on the server (HTTP 404)."""

    status_code = 404


def open_tile_source(file_path: str):
    configure_cache()
    try:
        return large_image.open(file_path, encoding="JPEG", jpegQuality=90)
    except large_image.exceptions.TileSourceError as exc:
        logger.error("Cannot open slide file %s for tiles: %s", file_path, exc)
        raise SlideFileMissing(
            f"The slide file {Path(file_path).name} is missing or unreadable on the server; "
            "ask an admin to restore it or import the slide again."
        ) from None


def tile_metadata(file_path: str) -> dict:
    """Return the pyramid shape the viewer needs: level-0 size, tile size, level count."""
    metadata = open_tile_source(file_path).getMetadata()
    return {
        "width_px": metadata["sizeX"],
        "height_px": metadata["sizeY"],
        "tile_px": metadata["tileWidth"],
        "levels": metadata["levels"],
    }


def read_tile(file_path: str, z: int, x: int, y: int) -> bytes | None:
    """Return the JPEG bytes of one deep-zoom tile, or None outside the pyramid."""
    source = open_tile_source(file_path)
    try:
        return source.getTile(x, y, z)
    except large_image.exceptions.TileSourceXYZRangeError:
        return None


def read_thumbnail(file_path: str, max_px: int = 512) -> bytes:
    data, _mime = open_tile_source(file_path).getThumbnail(
        width=max_px, height=max_px, encoding="JPEG"
    )
    return data
