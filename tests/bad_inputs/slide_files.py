"""Bad slide files, written at test time into a folder the caller gives.

The damaged Aperio files are copies of the real slide ``REAL_SVS`` (2220 x 2967 level-0
px, 0.499 µm/px). Its TIFF directories lie after the tile data, in the last third of the
file, so a copy cut in half has no directory left.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.slide_factory import squares_image, write_pyramid_tiff

REAL_SVS = Path("wsi") / "cmu-1-small-region.svs"
# Byte range of level 0's JPEG tiles in the real file (its first tile starts at byte 16
# and its first directory at byte 1 275 950), found with tifffile.
SVS_TILE_DATA_START = 16
SVS_TILE_DATA_END = 1_200_000
PAS_MAGENTA = (180, 60, 140)
GLASS_GREY = 245


def truncated_svs(shared_data: Path, folder: Path) -> Path:
    """Write the first half of the real SVS, as an interrupted copy leaves it."""
    content = (shared_data / REAL_SVS).read_bytes()
    path = folder / "truncated.svs"
    path.write_bytes(content[: len(content) // 2])
    return path


def corrupt_tiles_svs(shared_data: Path, folder: Path) -> Path:
    """Write the real SVS with level 0's tile data zeroed: it opens, but no tile decodes."""
    content = bytearray((shared_data / REAL_SVS).read_bytes())
    content[SVS_TILE_DATA_START:SVS_TILE_DATA_END] = bytes(SVS_TILE_DATA_END - SVS_TILE_DATA_START)
    path = folder / "corrupt_tiles.svs"
    path.write_bytes(bytes(content))
    return path


def png_named_svs(folder: Path) -> Path:
    """Write a small PNG under an Aperio suffix."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), PAS_MAGENTA).save(buffer, format="PNG")
    path = folder / "photo.svs"
    path.write_bytes(buffer.getvalue())
    return path


def text_named_tiff(folder: Path) -> Path:
    """Write a text file under a TIFF suffix."""
    path = folder / "notes.tiff"
    path.write_text("Biopsy 12, PAS, scanned twice.\n" * 20)
    return path


def text_file(folder: Path) -> Path:
    """Write a text file with its own suffix, which no slide format uses."""
    path = folder / "report.txt"
    path.write_text("Biopsy 12, PAS, IFTA 20 %.\n" * 20)
    return path


def junk_czi(folder: Path) -> Path:
    """Write a file with a Zeiss CZI name and magic but junk after it."""
    path = folder / "scan.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(range(256)) * 20)
    return path


def tiff_without_mpp(folder: Path) -> Path:
    """Write a tiled pyramidal TIFF with tissue but without resolution tags."""
    image = squares_image((1024, 768), [(100, 100, 300, PAS_MAGENTA)])
    return write_pyramid_tiff(folder / "no_mpp.tiff", image, mpp=None)


def blank_tiff(folder: Path, mpp: float = 0.5) -> Path:
    """Write a tiled pyramidal TIFF of glass only (light grey, no stain), with an mpp."""
    image = np.full((768, 1024, 3), GLASS_GREY, dtype=np.uint8)
    return write_pyramid_tiff(folder / "glass.tiff", image, mpp=mpp)


# 100 x 100 px at 2 µm/px is 200 µm across, a fifth of one 1024 px tile at 1 µm/px. The
# 60 px square is 14 400 µm², above the tissue mask's smallest object of 10 000 µm².
SMALL_SLIDE_PX = 100
SMALL_SLIDE_MPP = 2.0


def small_tiff(folder: Path) -> Path:
    """Write a one-level 100 x 100 px TIFF with a stained square, smaller than one tile."""
    image = squares_image((SMALL_SLIDE_PX, SMALL_SLIDE_PX), [(20, 20, 60, PAS_MAGENTA)])
    return write_pyramid_tiff(folder / "small.tiff", image, mpp=SMALL_SLIDE_MPP, level_count=1)


# The opaque square of the RGBA slide, in level-0 px: (x_min, y_min, x_max, y_max).
RGBA_OPAQUE_BOX = (128, 128, 896, 896)
RGBA_SIDE_PX = 1024
RGBA_MPP = 1.0


def rgba_transparent_border_tiff(folder: Path) -> Path:
    """Write a 1024 px RGBA TIFF whose 128 px border is fully transparent black.

    Only the stained square inside ``RGBA_OPAQUE_BOX`` is opaque. Read without its alpha,
    the border would be black, which a tissue detector could take for tissue or debris.
    """
    rgba = np.zeros((RGBA_SIDE_PX, RGBA_SIDE_PX, 4), dtype=np.uint8)
    x_min, y_min, x_max, y_max = RGBA_OPAQUE_BOX
    rgba[y_min:y_max, x_min:x_max, :3] = PAS_MAGENTA
    rgba[y_min:y_max, x_min:x_max, 3] = 255
    return write_pyramid_tiff(folder / "rgba_border.tiff", rgba, mpp=RGBA_MPP)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb_png(folder: Path, width_px: int = 20_000, height_px: int = 20_000) -> Path:
    """Write an all-black RGB PNG of a few hundred KB that declares 400 million px.

    Decoded whole, as Pillow does on load, it would take 1.6 GB as RGBA.
    """
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width_px)  # filter byte 0, then black pixels
    compressed = b"".join(compressor.compress(row) for _ in range(height_px))
    compressed += compressor.flush()
    header = struct.pack(">IIBBBBB", width_px, height_px, 8, 2, 0, 0, 0)
    path = folder / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", compressed)
        + _png_chunk(b"IEND", b"")
    )
    return path
