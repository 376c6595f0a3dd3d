"""Bad tile dataset folders (KI layout), written at test time into a folder the caller gives.

Each dataset copies real proximal tubule tiles of PAS stain from the KI data
(``REAL_PAIRS``, an image and its binary mask each) into ``<folder>/dataset/1_1_pt/pas``.
Then one file or folder is removed, replaced or damaged.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

KI_ROOT = Path("kidney_tiles") / "omniseg_KI"
CLASS_FOLDER = "1_1_pt"
STAIN = "pas"
# (image, mask) file names of the copied tiles.
REAL_PAIRS = (
    ("im_50_7.png", "im_50_7_mask_proximal.png"),
    ("im_54_4.png", "im_54_4_mask_proximal.png"),
)
# Sides of PNG headers that claim more pixels than a tile may have. 9,000 px gives 81
# million pixels, below the 89,478,485 at which Pillow starts to warn. 40,000 px gives 1.6
# billion, above the 178,956,970 at which Pillow refuses to decode unless large_image has
# switched its limit off.
BOMB_SIDES_PX = (9_000, 40_000)


def dataset_root(folder: Path) -> Path:
    """Return the dataset folder inside ``folder`` (not created)."""
    return folder / "dataset"


def stain_folder(folder: Path) -> Path:
    """Return the folder of the copied tiles inside the dataset."""
    return dataset_root(folder) / CLASS_FOLDER / STAIN


def copy_real_pairs(shared_data: Path, folder: Path, *, images: bool = True,
                    masks: bool = True, class_folder: str = CLASS_FOLDER) -> Path:
    """Copy the real tiles (their images, masks or both) and return the dataset folder."""
    source = shared_data / KI_ROOT / CLASS_FOLDER / STAIN
    target = dataset_root(folder) / class_folder / STAIN
    target.mkdir(parents=True)
    for image_name, mask_name in REAL_PAIRS:
        if images:
            shutil.copyfile(source / image_name, target / image_name)
        if masks:
            shutil.copyfile(source / mask_name, target / mask_name)
    return dataset_root(folder)


def first_image(folder: Path) -> Path:
    """Return the first copied image."""
    return stain_folder(folder) / REAL_PAIRS[0][0]


def first_mask(folder: Path) -> Path:
    """Return the first copied mask."""
    return stain_folder(folder) / REAL_PAIRS[0][1]


def _grey_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")).copy()


def text_as_mask(shared_data: Path, folder: Path) -> Path:
    """Replace the first mask with a line of text under its PNG name."""
    root = copy_real_pairs(shared_data, folder)
    first_mask(folder).write_text("mask lost in export\n", encoding="utf-8")
    return root


def truncated_image(shared_data: Path, folder: Path) -> Path:
    """Cut the first image to the first half of its bytes."""
    root = copy_real_pairs(shared_data, folder)
    content = first_image(folder).read_bytes()
    first_image(folder).write_bytes(content[: len(content) // 2])
    return root


def mask_wrong_size(shared_data: Path, folder: Path) -> Path:
    """Shrink the first mask to 128 x 128 px with nearest-neighbour sampling, so it stays binary."""
    root = copy_real_pairs(shared_data, folder)
    grey = _grey_mask(first_mask(folder))
    Image.fromarray(grey[::2, ::2]).save(first_mask(folder))
    return root


def grey_mask(shared_data: Path, folder: Path) -> Path:
    """Set the inside of the first mask to 128, as anti-aliased drawing tools leave it."""
    root = copy_real_pairs(shared_data, folder)
    grey = _grey_mask(first_mask(folder))
    grey[grey == 255] = 128
    Image.fromarray(grey).save(first_mask(folder))
    return root


def colour_mask(shared_data: Path, folder: Path) -> Path:
    """Draw the first mask in red on black, so its colour channels differ."""
    root = copy_real_pairs(shared_data, folder)
    grey = _grey_mask(first_mask(folder))
    red = np.zeros((*grey.shape, 3), dtype=np.uint8)
    red[..., 0] = grey
    Image.fromarray(red).save(first_mask(folder))
    return root


def two_masks(shared_data: Path, folder: Path) -> Path:
    """Add a second mask, of another label, for the first image."""
    root = copy_real_pairs(shared_data, folder)
    shutil.copyfile(first_mask(folder), stain_folder(folder) / "im_50_7_mask_distal.png")
    return root


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_mask(shared_data: Path, folder: Path, side_px: int = BOMB_SIDES_PX[-1]) -> Path:
    """Replace the first mask with a 60-byte PNG whose header claims ``side_px`` squared."""
    root = copy_real_pairs(shared_data, folder)
    header = struct.pack(">IIBBBBB", side_px, side_px, 1, 0, 0, 0, 0)
    first_mask(folder).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
    return root
