"""Labelled tiles from the KI kidney dataset, split into per-object instances.

The KI layout is::

    root/<k>_<s>_<name>/<stain>/im_<A>_<B>.png                 RGBA image, 256 x 256
    root/<k>_<s>_<name>/<stain>/im_<A>_<B>_mask_<label>.png    binary mask, values 0/255

where ``<s>`` is the scale index and each mask marks every object of ONE class in its
tile. Touching objects (tubules above all) share one mask component, so
``split_instances`` separates them with a distance-transform watershed.

Coordinates: tile pixels, x to the right and y down, in the pixel-edge convention of
``ml.polygons`` (pixel (row r, col c) covers [c, c + 1] x [r, r + 1]). Arrays are (H, W).

Usage::

    dataset = read_tile_dataset(shared_data / "kidney_tiles" / "omniseg_KI")
    print(dataset.summary().format())
    train, held_out = split_by_source(dataset.samples, held_out_fraction=0.25, seed=0)
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
import shapely.affinity
from PIL import Image
from shapely.geometry import Polygon

from ml.errors import NephrowebError, SettingsError
from ml.polygons import mask_to_polygons

logger = logging.getLogger(__name__)

# Folder name part -> product class. None skips the folder, for the reason in
# KI_SKIP_REASONS. The tuft is only the capillary tuft inside the glomerulus, so training
# on it as "glomerulus" would teach a smaller outline than the capsule masks do.
DEFAULT_KI_CLASS_MAP: Mapping[str, str | None] = MappingProxyType(
    {
        "dt": "distal tubule",
        "pt": "proximal tubule",
        "capsule": "glomerulus",
        "tuft": None,
        "vessel": "vessel",
        "ptc": None,
    }
)

KI_SKIP_REASONS: Mapping[str, str] = MappingProxyType(
    {
        "tuft": "glomerular tuft only, a different outline from the product's glomerulus "
        "(the whole unit including Bowman's capsule, folder 'capsule')",
        "ptc": "peritubular capillary lumen, not a product class",
    }
)

# The scale index s is read as about 5x * 2**s (0 = 5x, 1 = 10x, 3 = 40x), which gives
# about 2.0 / 2**s um/px. This is an estimate because the KI data record no pixel size.
KI_MPP_AT_SCALE_0_ESTIMATE = 2.0

# 30 px is about 30 um2 at 1 um/px, far below a tubule cross-section (several hundred um2
# and more), so the default drops specks and slivers cut off by the tile edge.
DEFAULT_MIN_INSTANCE_AREA_PX = 30
# Chosen by eye on the PAS tubule tiles of KI. Over all 32 KI tubule tiles, heights of
# 1, 2 and 4 px give 403, 363 and 335 instances, from 299 mask components.
DEFAULT_MIN_PEAK_HEIGHT_PX = 2.0
# Flooding step of the watershed, in pixels of distance.
_FLOOD_STEP_PX = 0.5

# A tile is decoded as float32 RGBA, 16 bytes per pixel, so the largest allowed tile
# (8192 x 8192 px) takes 1 GiB. Larger files are slides or corrupt headers, not tiles.
MAX_TILE_PIXELS = 8192 * 8192

_CLASS_FOLDER_PATTERN = re.compile(r"^(?P<class_index>\d+)_(?P<scale_index>\d+)_(?P<name>.+)$")
_MASK_INFIX = "_mask_"
_SOURCE_PATTERN = re.compile(r"^im_(?P<source>\d+)_(?P<patch>\d+)$")


class TileDatasetError(NephrowebError, ValueError):
    """A tile dataset folder or file cannot be read as the KI layout."""


def estimate_ki_mpp(scale_index: int) -> float:
    """Estimate microns per pixel for a KI scale index, because the KI data record none."""
    return KI_MPP_AT_SCALE_0_ESTIMATE / 2**scale_index


@dataclass(frozen=True)
class TileInstance:
    """One object of a tile mask after touching objects were split apart.

    Attributes:
        polygon_px: Outline in tile pixels (pixel-edge convention), holes kept.
        mask: (H, W) bool mask of the instance, the size of the tile.
        area_px: Pixel count of ``mask``, equal to ``polygon_px.area``.
        touches_border: The instance reaches a tile edge, so the tile may cut the object.
    """

    polygon_px: Polygon
    mask: np.ndarray
    area_px: int
    touches_border: bool


@dataclass(frozen=True)
class InstanceSplit:
    """Instances found in one binary mask.

    Attributes:
        instances: Kept instances, largest first.
        component_count: 4-connected components in the mask before splitting.
        dropped_count: Instances smaller than the minimum area, left out.
    """

    instances: tuple[TileInstance, ...]
    component_count: int
    dropped_count: int


@dataclass(frozen=True)
class TileSample:
    """One image tile with the instances of its single annotated class.

    Attributes:
        image_path: The RGBA image file.
        mask_path: The binary mask file paired with it.
        stain: Stain folder name (``pas``, ``he``, ``sil`` or ``tri`` in KI).
        class_name: Product class, e.g. "proximal tubule".
        source_id: Source image of the tile (``im_<A>`` from ``im_<A>_<B>.png``). Tiles
            that share it can show the same tissue, so a split keeps them together.
        scale_index: Scale index from the class folder name.
        image_rgb: (H, W, 3) uint8 image, composited on white by its alpha channel.
        instances: Instances of ``class_name``, largest first.
        component_count: 4-connected mask components before splitting.
        dropped_count: Instances below the minimum area, left out of ``instances``.
    """

    image_path: Path
    mask_path: Path
    stain: str
    class_name: str
    source_id: str
    scale_index: int
    image_rgb: np.ndarray
    instances: tuple[TileInstance, ...]
    component_count: int
    dropped_count: int

    @property
    def mpp_estimate(self) -> float:
        """Estimated microns per pixel of the tile, from its scale index."""
        return estimate_ki_mpp(self.scale_index)


@dataclass(frozen=True)
class SkippedFolder:
    """A folder under the dataset root that was not read, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetSummary:
    """Counts over a tile dataset.

    Attributes:
        pairs_per_class: Image/mask pairs per product class.
        pairs_per_class_stain: Pairs per (class, stain).
        instances_per_class: Kept instances per class.
        instances_per_tile: Per class, the kept instance count of each tile, ascending.
        components_per_class: Mask components per class before splitting.
        dropped_per_class: Instances per class dropped as smaller than the minimum area.
        unpaired_files: Images without a mask, masks without an image and non-PNG files.
        skipped_folders: Folders not read, with the reason.
        mpp_estimate_by_scale_index: Estimated um/px for each scale index present.
        mpp_note: How the mpp values were obtained.
    """

    pairs_per_class: Mapping[str, int]
    pairs_per_class_stain: Mapping[tuple[str, str], int]
    instances_per_class: Mapping[str, int]
    instances_per_tile: Mapping[str, tuple[int, ...]]
    components_per_class: Mapping[str, int]
    dropped_per_class: Mapping[str, int]
    unpaired_files: tuple[Path, ...]
    skipped_folders: tuple[SkippedFolder, ...]
    mpp_estimate_by_scale_index: Mapping[int, float]
    mpp_note: str

    @property
    def dropped_total(self) -> int:
        """Instances dropped as too small, over all classes."""
        return sum(self.dropped_per_class.values())

    def format(self) -> str:
        """Render the summary as plain text lines for a log or a terminal."""
        lines = ["Pairs per class and stain:"]
        for (class_name, stain), count in sorted(self.pairs_per_class_stain.items()):
            lines.append(f"  {class_name} / {stain}: {count}")
        lines.append("Instances per class (components before splitting, dropped as small):")
        for class_name, count in sorted(self.instances_per_class.items()):
            lines.append(
                f"  {class_name}: {count} (components {self.components_per_class[class_name]}, "
                f"dropped {self.dropped_per_class[class_name]}, "
                f"per tile {list(self.instances_per_tile[class_name])})"
            )
        lines.append(f"Unpaired files: {[str(path) for path in self.unpaired_files] or 'none'}")
        for skipped in self.skipped_folders:
            lines.append(f"Skipped {skipped.path}: {skipped.reason}")
        for scale_index, mpp in sorted(self.mpp_estimate_by_scale_index.items()):
            lines.append(f"Scale index {scale_index}: about {mpp:g} um/px")
        lines.append(self.mpp_note)
        return "\n".join(lines)


@dataclass(frozen=True)
class TileDataset:
    """Tiles read from a KI-layout folder.

    Attributes:
        root: The dataset folder.
        samples: Paired tiles, sorted by class folder, stain and file name.
        unpaired_files: Images without a mask, masks without an image and non-PNG files.
        skipped_folders: Folders not read, with the reason.
        min_instance_area_px: Minimum instance area used when splitting.
        min_peak_height_px: Watershed marker parameter used when splitting.
    """

    root: Path
    samples: tuple[TileSample, ...]
    unpaired_files: tuple[Path, ...]
    skipped_folders: tuple[SkippedFolder, ...]
    min_instance_area_px: int
    min_peak_height_px: float

    def summary(self) -> DatasetSummary:
        """Count pairs, instances, dropped instances and unpaired files per class and stain."""
        pairs_per_class: Counter[str] = Counter()
        pairs_per_class_stain: Counter[tuple[str, str]] = Counter()
        instances_per_class: Counter[str] = Counter()
        components_per_class: Counter[str] = Counter()
        dropped_per_class: Counter[str] = Counter()
        instances_per_tile: defaultdict[str, list[int]] = defaultdict(list)
        scale_indices = set()

        for sample in self.samples:
            pairs_per_class[sample.class_name] += 1
            pairs_per_class_stain[(sample.class_name, sample.stain)] += 1
            instances_per_class[sample.class_name] += len(sample.instances)
            components_per_class[sample.class_name] += sample.component_count
            dropped_per_class[sample.class_name] += sample.dropped_count
            instances_per_tile[sample.class_name].append(len(sample.instances))
            scale_indices.add(sample.scale_index)

        return DatasetSummary(
            pairs_per_class=dict(pairs_per_class),
            pairs_per_class_stain=dict(pairs_per_class_stain),
            instances_per_class=dict(instances_per_class),
            instances_per_tile={
                class_name: tuple(sorted(counts))
                for class_name, counts in instances_per_tile.items()
            },
            components_per_class=dict(components_per_class),
            dropped_per_class=dict(dropped_per_class),
            unpaired_files=self.unpaired_files,
            skipped_folders=self.skipped_folders,
            mpp_estimate_by_scale_index={
                scale_index: estimate_ki_mpp(scale_index) for scale_index in sorted(scale_indices)
            },
            mpp_note=(
                "The KI data do not record pixel size. The um/px values are estimates from "
                "the scale index (about 2.0 / 2**s), not measurements."
            ),
        )


def read_tile_dataset(
    root: Path | str,
    class_map: Mapping[str, str | None] = DEFAULT_KI_CLASS_MAP,
    stains: Iterable[str] | None = None,
    min_instance_area_px: int = DEFAULT_MIN_INSTANCE_AREA_PX,
    min_peak_height_px: float = DEFAULT_MIN_PEAK_HEIGHT_PX,
) -> TileDataset:
    """Read every image/mask pair of a KI-layout folder and split masks into instances.

    By default the folders ``3_0_tuft`` (glomerular tuft, a smaller outline than the
    product's glomerulus) and ``5_3_ptc`` (peritubular capillary lumen, not a product
    class) are skipped. ``capsule`` becomes "glomerulus" because its masks cover the whole
    glomerular unit including Bowman's capsule. Skipped folders and unpaired files are
    listed in the dataset and its summary. Unpaired files are also logged as warnings and
    skipped folders at info level.

    Args:
        root: Folder that contains the ``<k>_<s>_<name>`` class folders.
        class_map: Class folder name part (``dt``, ``pt``, ...) -> product class, or None
            to skip that folder. Folders whose name part is not a key are skipped too.
        stains: Stain folders to read, or None for all.
        min_instance_area_px: Instances smaller than this many pixels are dropped and
            counted. Measured at the tile's own scale.
        min_peak_height_px: See ``split_instances``.

    Raises:
        SettingsError: ``min_instance_area_px`` or ``min_peak_height_px`` is out of range.
        TileDatasetError: The root is missing or has no class folder, or a requested stain
            exists in no class folder. Also raised when an image has two masks, a mask
            does not match its image size, or a mask contains a value other than 0 and 255.
    """
    _check_split_settings(min_instance_area_px, min_peak_height_px)
    root = Path(root)
    if not root.is_dir():
        raise TileDatasetError(
            f"Tile dataset folder {root} does not exist or is not a folder. Pass the folder "
            "that contains the class folders such as 0_1_dt and 1_1_pt."
        )
    requested_stains = None if stains is None else set(stains)

    class_folders, skipped = _select_class_folders(root, class_map)
    if not any(_CLASS_FOLDER_PATTERN.match(path.name) for path in root.iterdir() if path.is_dir()):
        raise TileDatasetError(
            f"Tile dataset folder {root} contains no class folder named like '0_1_dt' "
            "(<class index>_<scale index>_<name>). Pass the KI root folder."
        )

    stain_folders = [
        (stain_folder, class_name, scale_index)
        for class_folder, class_name, scale_index in class_folders
        for stain_folder in sorted(path for path in class_folder.iterdir() if path.is_dir())
    ]
    if requested_stains is not None:
        stains_found = {stain_folder.name for stain_folder, _, _ in stain_folders}
        missing_stains = requested_stains - stains_found
        if missing_stains:
            raise TileDatasetError(
                f"Stain folders {sorted(missing_stains)} were not found in any class folder of "
                f"{root}. Available stains: {sorted(stains_found)}."
            )
        stain_folders = [entry for entry in stain_folders if entry[0].name in requested_stains]

    samples: list[TileSample] = []
    unpaired: list[Path] = []
    for stain_folder, class_name, scale_index in stain_folders:
        pairs, folder_unpaired = _pair_files(stain_folder)
        unpaired.extend(folder_unpaired)
        for image_path, mask_path in pairs:
            samples.append(
                _read_sample(
                    image_path,
                    mask_path,
                    stain=stain_folder.name,
                    class_name=class_name,
                    scale_index=scale_index,
                    min_instance_area_px=min_instance_area_px,
                    min_peak_height_px=min_peak_height_px,
                )
            )

    for path in unpaired:
        logger.warning("Tile file %s was not read: not a PNG, or no partner image or mask.", path)
    for folder in skipped:
        logger.info("Skipped tile folder %s: %s", folder.path, folder.reason)
    logger.info(
        "Read %d tile pairs from %s (%d unpaired files, %d folders skipped).",
        len(samples),
        root,
        len(unpaired),
        len(skipped),
    )
    return TileDataset(
        root=root,
        samples=tuple(samples),
        unpaired_files=tuple(unpaired),
        skipped_folders=tuple(skipped),
        min_instance_area_px=min_instance_area_px,
        min_peak_height_px=min_peak_height_px,
    )


def _select_class_folders(
    root: Path, class_map: Mapping[str, str | None]
) -> tuple[list[tuple[Path, str, int]], list[SkippedFolder]]:
    """Return (folder, class name, scale index) for mapped class folders, and the skipped ones."""
    selected = []
    skipped = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        match = _CLASS_FOLDER_PATTERN.match(folder.name)
        if match is None:
            skipped.append(
                SkippedFolder(folder, "name is not <class index>_<scale index>_<name>")
            )
            continue
        name = match["name"]
        if name not in class_map:
            skipped.append(SkippedFolder(folder, f"'{name}' is not in the class map"))
            continue
        class_name = class_map[name]
        if class_name is None:
            reason = KI_SKIP_REASONS.get(name, "mapped to no class")
            skipped.append(SkippedFolder(folder, reason))
            continue
        selected.append((folder, class_name, int(match["scale_index"])))
    return selected, skipped


def _pair_files(stain_folder: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair ``<stem>.png`` with ``<stem>_mask_<label>.png``; return the pairs and the unpaired.

    Files that are not PNG count as unpaired, so they are reported instead of ignored.
    """
    images: dict[str, Path] = {}
    masks: defaultdict[str, list[Path]] = defaultdict(list)
    unpaired = []
    for path in sorted(path for path in stain_folder.iterdir() if path.is_file()):
        if path.suffix.lower() != ".png":
            unpaired.append(path)
        elif _MASK_INFIX in path.stem:
            masks[path.stem.split(_MASK_INFIX, 1)[0]].append(path)
        else:
            images[path.stem] = path

    pairs = []
    for stem, image_path in sorted(images.items()):
        image_masks = masks.pop(stem, [])
        if not image_masks:
            unpaired.append(image_path)
        elif len(image_masks) > 1:
            raise TileDatasetError(
                f"Image {image_path} has {len(image_masks)} masks "
                f"({', '.join(path.name for path in image_masks)}); a KI tile has one. "
                "Move the extra masks out of the folder."
            )
        else:
            pairs.append((image_path, image_masks[0]))
    for mask_paths in masks.values():
        unpaired.extend(mask_paths)
    return pairs, sorted(unpaired)


def _read_sample(
    image_path: Path,
    mask_path: Path,
    stain: str,
    class_name: str,
    scale_index: int,
    min_instance_area_px: int,
    min_peak_height_px: float,
) -> TileSample:
    image_rgb = read_image_rgb(image_path)
    mask = read_binary_mask(mask_path)
    if mask.shape != image_rgb.shape[:2]:
        raise TileDatasetError(
            f"Mask {mask_path} is {mask.shape[1]} x {mask.shape[0]} px but its image "
            f"{image_path.name} is {image_rgb.shape[1]} x {image_rgb.shape[0]} px. "
            "Replace the mask with one of the image's size."
        )
    split = split_instances(
        mask, min_area_px=min_instance_area_px, min_peak_height_px=min_peak_height_px
    )
    source_match = _SOURCE_PATTERN.match(image_path.stem)
    # Names that do not follow im_<A>_<B> fall back to one source per file.
    source_id = f"im_{source_match['source']}" if source_match else image_path.stem
    return TileSample(
        image_path=image_path,
        mask_path=mask_path,
        stain=stain,
        class_name=class_name,
        source_id=source_id,
        scale_index=scale_index,
        image_rgb=image_rgb,
        instances=split.instances,
        component_count=split.component_count,
        dropped_count=split.dropped_count,
    )


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, composited on white by its alpha channel."""
    try:
        with _open_tile_file(path, "Image") as image:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    except OSError as exc:
        raise TileDatasetError(
            f"Image {path} cannot be read as PNG ({exc}). Replace or remove the file."
        ) from exc
    alpha = rgba[..., 3:4] / 255.0
    composited = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(composited).astype(np.uint8)


def read_binary_mask(path: Path) -> np.ndarray:
    """Read a 0/255 mask as an (H, W) bool array; the alpha channel is ignored.

    Raises:
        TileDatasetError: The file cannot be read, has more than ``MAX_TILE_PIXELS``, its
            colour channels differ, or a pixel is neither 0 nor 255.
    """
    try:
        with _open_tile_file(path, "Mask") as image:
            if image.mode == "1":
                return np.asarray(image, dtype=bool)
            if image.mode not in ("L", "RGB", "RGBA"):
                image = image.convert("RGBA")
            array = np.asarray(image)
    except OSError as exc:
        raise TileDatasetError(
            f"Mask {path} cannot be read as PNG ({exc}). Replace or remove the file."
        ) from exc

    if array.ndim == 3:
        red, green, blue = array[..., 0], array[..., 1], array[..., 2]
        if not (np.array_equal(red, green) and np.array_equal(red, blue)):
            raise TileDatasetError(
                f"Mask {path} has different red, green and blue values; a binary mask is "
                "grey. Save it as black (0) and white (255) only."
            )
        array = red

    invalid = (array != 0) & (array != 255)
    if invalid.any():
        values = np.unique(array[invalid])
        raise TileDatasetError(
            f"Mask {path} has {int(invalid.sum())} pixels with values other than 0 and 255 "
            f"(found {values[:5].tolist()}). A binary mask holds only 0 (outside) and 255 "
            "(inside). Re-export it without anti-aliasing or threshold it at 128."
        )
    return array == 255


def _open_tile_file(path: Path, kind: str) -> Image.Image:
    """Open an image or mask lazily, rejecting one too large for a tile before it is decoded.

    Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) cannot be relied on because
    large_image 1.35, which the web app imports, sets it to None for the whole process.

    Raises:
        OSError: Pillow cannot identify the file.
        TileDatasetError: The image has more than ``MAX_TILE_PIXELS``.
    """
    too_large = (
        f"{kind} {path} has more than the {MAX_TILE_PIXELS:,} pixels a tile may have, so it "
        "was not decoded. Cut large images into tiles (KI tiles are 256 x 256 px)."
    )
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Raised only while Image.MAX_IMAGE_PIXELS is set, for more than twice that many pixels.
        raise TileDatasetError(f"{too_large} Pillow: {exc}") from exc
    if image.width * image.height > MAX_TILE_PIXELS:
        image.close()
        raise TileDatasetError(f"{too_large} It is {image.width} x {image.height} px.")
    return image


def split_instances(
    mask: np.ndarray,
    min_area_px: int = DEFAULT_MIN_INSTANCE_AREA_PX,
    min_peak_height_px: float = DEFAULT_MIN_PEAK_HEIGHT_PX,
) -> InstanceSplit:
    """Split a binary mask into instances, separating touching objects.

    Steps, per 4-connected component:

    1. Compute the Euclidean distance to the background. The tile outside counts as
       background, so an object cut by the tile edge ends there.
    2. Mark each distance peak that rises more than ``min_peak_height_px`` above the
       saddle to any higher peak (the h-maxima transform, by morphological
       reconstruction). The highest peak is always marked.
    3. With one marker the component is one instance. With more, a marker-controlled
       watershed floods the inverted distance from the markers (see
       ``_flood_from_markers``), so the instances cover the component exactly.

    Args:
        mask: (H, W) array, non-zero means inside.
        min_area_px: Instances with fewer pixels are dropped and counted.
        min_peak_height_px: Minimum peak height above its saddle, in pixels. Two touching
            discs of radius r joined by a neck of half-width w split when r - w exceeds
            this value. Larger values split less.

    Returns:
        The instances, largest first, with component and dropped counts.

    Cost: about 35 ms per 256 x 256 KI tubule mask (the 60 default KI tiles take about
    1.5 s including PNG decoding, one CPU core, measured).
    """
    # Limitation: objects that share a long straight edge, with no neck between them, have
    # a single distance ridge and stay one instance.
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise TileDatasetError(
            f"Mask must be a 2-D (H, W) array, got shape {mask.shape}. Pass one channel."
        )
    _check_split_settings(min_area_px, min_peak_height_px)

    height, width = mask.shape
    component_count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=4
    )
    instances = []
    dropped_count = 0
    for label in range(1, component_count):
        x_px, y_px, w_px, h_px = (
            int(stats[label, key])
            for key in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
        )
        component_crop = components[y_px : y_px + h_px, x_px : x_px + w_px] == label
        for part_crop in _split_component(component_crop, min_peak_height_px):
            area_px = int(part_crop.sum())
            if area_px < min_area_px:
                dropped_count += 1
                continue
            instance_mask = np.zeros((height, width), dtype=bool)
            instance_mask[y_px : y_px + h_px, x_px : x_px + w_px] = part_crop
            instances.append(_make_instance(instance_mask, part_crop, x_px, y_px, area_px))

    instances.sort(
        key=lambda instance: (
            -instance.area_px,
            instance.polygon_px.bounds[1],
            instance.polygon_px.bounds[0],
        )
    )
    return InstanceSplit(
        instances=tuple(instances),
        component_count=component_count - 1,
        dropped_count=dropped_count,
    )


def _check_split_settings(min_area_px: int, min_peak_height_px: float) -> None:
    if min_area_px < 1:
        raise SettingsError(
            f"min_area_px must be a whole number of pixels of at least 1, got {min_area_px}."
        )
    if min_peak_height_px <= 0:
        raise SettingsError(
            f"min_peak_height_px must be a positive distance in pixels, got "
            f"{min_peak_height_px}. Use about 2 for KI tubules at about 1 um/px."
        )


def _make_instance(
    instance_mask: np.ndarray, part_crop: np.ndarray, x_px: int, y_px: int, area_px: int
) -> TileInstance:
    # Every part is 4-connected, so it traces to one polygon.
    polygon = shapely.affinity.translate(mask_to_polygons(part_crop)[0], x_px, y_px)
    touches_border = bool(
        instance_mask[0].any()
        or instance_mask[-1].any()
        or instance_mask[:, 0].any()
        or instance_mask[:, -1].any()
    )
    return TileInstance(
        polygon_px=polygon, mask=instance_mask, area_px=area_px, touches_border=touches_border
    )


def _split_component(component: np.ndarray, min_peak_height_px: float) -> list[np.ndarray]:
    """Split one 4-connected component (a cropped bool mask) into 4-connected parts."""
    # A 1-pixel background frame makes the crop edge a boundary for the distance transform.
    padded = np.pad(component, 1)
    distance = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    marker_count, markers = _distance_peaks(distance, padded, min_peak_height_px)
    if marker_count <= 1:
        return [component]

    labels = _flood_from_markers(distance, padded, markers)[1:-1, 1:-1]
    parts = []
    for label in range(1, marker_count + 1):
        region = (labels == label).astype(np.uint8)
        # Growth is 4-connected, but a marker itself may be only 8-connected, so a region
        # can come out in pieces. Each 4-connected piece becomes a part of its own.
        piece_count, pieces = cv2.connectedComponents(region, connectivity=4)
        parts.extend(pieces == piece for piece in range(1, piece_count))
    return parts


def _distance_peaks(
    distance: np.ndarray, inside: np.ndarray, min_peak_height_px: float
) -> tuple[int, np.ndarray]:
    """Label the h-maxima of the distance map inside the object as int32 markers 1..N."""
    if distance.max() <= min_peak_height_px:
        return 1, inside.astype(np.int32)

    # h-maxima transform: reconstruct (distance - h) under distance, which flattens every
    # peak lower than h above its saddle into the surrounding slope.
    flattened = _reconstruct_by_dilation(distance - min_peak_height_px, distance)
    # The regional maxima of the flattened map are its plateaus that nothing higher reaches.
    # Outside the object the map is set far below, so the background is never a maximum.
    flattened[~inside] = -1.0e6
    step = 1.0e-3
    lowered = _reconstruct_by_dilation(flattened - step, flattened)
    peaks = ((flattened - lowered) > step / 2) & inside
    marker_count, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    return marker_count - 1, markers.astype(np.int32)


def _reconstruct_by_dilation(marker: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grey-level reconstruction of ``marker`` under ``mask`` with 8-connected dilation."""
    kernel = np.ones((3, 3), dtype=np.uint8)
    current = np.minimum(marker, mask).astype(np.float32)
    while True:
        grown = np.minimum(cv2.dilate(current, kernel), mask)
        if np.array_equal(grown, current):
            return current
        current = grown


def _flood_from_markers(
    distance: np.ndarray, inside: np.ndarray, markers: np.ndarray
) -> np.ndarray:
    """Watershed of the inverted distance map by flooding, every object pixel labelled.

    ``cv2.watershed`` is not used because it ranks pixels by the colour difference to
    their neighbour (the gradient of its input image), not by the value of a relief, so
    it cannot flood a distance map from its peaks downwards. Here the water level falls
    from the highest distance in steps of ``_FLOOD_STEP_PX``. At each level the labelled
    regions grow by 4-connected dilation into unlabelled object pixels at or above the
    level until nothing changes. Where two regions reach a pixel in the same step, the
    larger label takes it, which moves the boundary by at most one pixel.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    labels = markers.astype(np.int32)
    levels = np.arange(float(distance.max()), 0.0, -_FLOOD_STEP_PX).tolist() + [0.0]
    for level in levels:
        allowed = inside & (distance >= level)
        while True:
            reachable = cv2.dilate(labels.astype(np.float32), kernel).astype(np.int32)
            newly_labelled = allowed & (labels == 0) & (reachable > 0)
            if not newly_labelled.any():
                break
            labels[newly_labelled] = reachable[newly_labelled]
    return labels


def split_by_source(
    samples: Sequence[TileSample], held_out_fraction: float, seed: int
) -> tuple[tuple[TileSample, ...], tuple[TileSample, ...]]:
    """Split tiles into train and held-out sets so that no source lands on both sides.

    A source is ``im_<A>`` from the file name ``im_<A>_<B>.png``. Tiles that share A
    within one stain can show the same tissue region pixel for pixel, so A names the
    source image that the tiles were cut from. Template matching found such shared regions
    between distal and proximal tubule tiles, and between capsule and tuft tiles. The same
    A in two stains is grouped too, because the names do not say whether it is the same
    case.

    Sources are shuffled with ``random.Random(seed)``. Each source in turn moves to the
    held-out side if that brings its tile count closer to ``held_out_fraction`` of all
    tiles. Each side gets at least one source, and both keep the input order.

    Raises:
        SettingsError: ``held_out_fraction`` is not strictly between 0 and 1.
        TileDatasetError: The samples come from fewer than two sources.
    """
    # Limitation: the KI names carry no patient id, so two sources may be one patient.
    if not 0.0 < held_out_fraction < 1.0:
        raise SettingsError(
            f"held_out_fraction must be between 0 and 1 (exclusive), got {held_out_fraction}."
        )
    source_ids = sorted({sample.source_id for sample in samples})
    if len(source_ids) < 2:
        raise TileDatasetError(
            f"Cannot split {len(samples)} tiles from {len(source_ids)} source(s) "
            f"{source_ids}: each side needs its own source. Add tiles from another source."
        )

    tiles_per_source = Counter(sample.source_id for sample in samples)
    random.Random(seed).shuffle(source_ids)
    target = held_out_fraction * len(samples)
    held_out_ids: set[str] = set()
    held_out_count = 0
    # The last source always stays on the train side.
    candidate_ids = source_ids[:-1]
    for source_id in candidate_ids:
        candidate = held_out_count + tiles_per_source[source_id]
        if abs(candidate - target) < abs(held_out_count - target):
            held_out_ids.add(source_id)
            held_out_count = candidate
    if not held_out_ids:
        # Every source has at least twice the target count, so hold out the smallest one.
        held_out_ids.add(min(candidate_ids, key=lambda source_id: tiles_per_source[source_id]))

    train = tuple(sample for sample in samples if sample.source_id not in held_out_ids)
    held_out = tuple(sample for sample in samples if sample.source_id in held_out_ids)
    logger.info(
        "Split %d tiles by source: %d train, %d held out (%d of %d sources, seed %d).",
        len(samples),
        len(train),
        len(held_out),
        len(held_out_ids),
        len(source_ids),
        seed,
    )
    return train, held_out
