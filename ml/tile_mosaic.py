"""Labelled tiles of one stain and scale laid out as one slide: a grid mosaic.

A tile dataset (``ml.tile_dataset``) has no slides, but the product trains, segments and
reviews on slides. This module places the tiles of one (stain, scale index) group in a
grid, writes the grid as a pyramidal TIFF with the group's mpp, and returns every
instance outline moved into the mosaic's level-0 pixels. Tiles of different scale
indexes differ in mpp, so a dataset becomes one mosaic per (stain, scale index) group.

Tiles are separated by a gutter of plain glass colour (``DEFAULT_GUTTER_PX``, 0 for
none). Without it, objects cut by the edges of two neighbouring tiles would touch
across the seam, so SAM, the merge of proposals and the viewer would see one object.
A model would also see tissue continue where it does not. The gutter makes each tile
edge look like the edge of a tissue section, which is what it is.

Coordinates: level-0 pixels of the mosaic, x to the right and y down, in the pixel-edge
convention of ``ml.polygons``. A polygon's area therefore equals its mask's pixel count.

Usage::

    dataset = read_tile_dataset(root, stains=["pas"])
    for group, samples in group_samples(dataset.samples).items():
        layout = compose_mosaic(samples)
        mosaic = write_tile_mosaic(layout, out_dir / f"ki_{group.stain}_{group.scale_index}.tiff")
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely.affinity
from shapely.geometry import Polygon

from ml.annotation_files import AnnotationObject
from ml.errors import SettingsError
from ml.pyramid_tiff import write_pyramidal_tiff
from ml.qupath_geojson import write_qupath_geojson
from ml.tile_dataset import TileDatasetError, TileSample, estimate_ki_mpp

logger = logging.getLogger(__name__)

# 16 px keeps neighbouring tiles 8 px apart even on pyramid level 1 (half size), and is
# small next to a 256 px KI tile.
DEFAULT_GUTTER_PX = 16
# The colour that ``read_image_rgb`` composites transparent tile pixels on. The tissue
# detector (``ml.tissue``) reads it as glass: saturation 0 and optical density 0.
GUTTER_RGB = (255, 255, 255)
# Namespace of the GeoJSON feature ids, so the same mosaic always gets the same ids.
_FEATURE_ID_NAMESPACE = uuid.UUID("6f3c1f0e-6d1a-4d8e-9a51-6b7f2f0c9e31")


@dataclass(frozen=True, order=True)
class MosaicGroup:
    """The tiles that share one mosaic: same stain and same scale index (so same mpp)."""

    stain: str
    scale_index: int


@dataclass(frozen=True)
class MosaicTile:
    """Placement of one dataset tile in the mosaic.

    Attributes:
        index: Position in the mosaic's tile order, row by row.
        row: Grid row, from 0 at the top.
        column: Grid column, from 0 at the left.
        x_level0: Left edge of the tile in mosaic level-0 pixels.
        y_level0: Top edge of the tile in mosaic level-0 pixels.
        width_px: Tile width in pixels.
        height_px: Tile height in pixels.
        source_name: ``<class folder>/<stain>/<file>`` of the tile image.
        source_id: Source image of the tile (``im_<A>``), for splits by source.
        image_path: The tile image file.
        mask_path: The tile mask file.
        class_name: The one class annotated in the tile.
    """

    index: int
    row: int
    column: int
    x_level0: int
    y_level0: int
    width_px: int
    height_px: int
    source_name: str
    source_id: str
    image_path: Path
    mask_path: Path
    class_name: str


@dataclass(frozen=True)
class MosaicInstance:
    """One instance of a tile, moved into mosaic level-0 pixels.

    Attributes:
        class_name: Product class, e.g. "proximal tubule".
        polygon_level0: Outline in mosaic level-0 pixels, holes kept.
        area_px: Pixel count of the instance's mask, equal to ``polygon_level0.area``.
        tile_index: ``MosaicTile.index`` of the tile it comes from.
        touches_tile_border: The instance reaches its tile's edge, so the tile may cut it.
    """

    class_name: str
    polygon_level0: Polygon
    area_px: int
    tile_index: int
    touches_tile_border: bool


@dataclass(frozen=True)
class MosaicLayout:
    """A composed mosaic in memory, not yet written.

    Attributes:
        group: Stain and scale index of every tile.
        mpp: Level-0 pixel size in µm/px.
        mpp_is_estimate: True when ``mpp`` comes from ``estimate_ki_mpp``.
        gutter_px: Glass between tiles and around the grid, in pixels.
        image_rgb: (H, W, 3) uint8 level-0 image.
        tiles: Tiles in grid order, row by row.
        instances: Instances tile by tile, in each tile's order (largest first).
    """

    group: MosaicGroup
    mpp: float
    mpp_is_estimate: bool
    gutter_px: int
    image_rgb: np.ndarray
    tiles: tuple[MosaicTile, ...]
    instances: tuple[MosaicInstance, ...]

    @property
    def width_px(self) -> int:
        """Level-0 width of the mosaic."""
        return int(self.image_rgb.shape[1])

    @property
    def height_px(self) -> int:
        """Level-0 height of the mosaic."""
        return int(self.image_rgb.shape[0])

    def content_digest(self) -> str:
        """Return a SHA-256 hex digest of the pixels, the tiles and the instances.

        Two layouts with the same digest write the same slide and annotations, so a caller
        can put the digest in the file name and never overwrite a file with other content.
        """
        digest = hashlib.sha256()
        header = {
            "stain": self.group.stain,
            "scale_index": self.group.scale_index,
            "mpp": self.mpp,
            "gutter_px": self.gutter_px,
            "shape": list(self.image_rgb.shape),
            "tiles": [
                [tile.source_name, tile.x_level0, tile.y_level0, tile.class_name]
                for tile in self.tiles
            ],
        }
        digest.update(json.dumps(header, sort_keys=True).encode("utf-8"))
        digest.update(np.ascontiguousarray(self.image_rgb).tobytes())
        for instance in self.instances:
            digest.update(instance.class_name.encode("utf-8"))
            digest.update(instance.polygon_level0.wkb)
        return digest.hexdigest()


@dataclass(frozen=True)
class TileMosaic:
    """A mosaic written as a pyramidal TIFF, with its tiles and instances.

    Attributes:
        path: The pyramidal TIFF.
        geojson_path: The instances as QuPath GeoJSON, or None when not written.
        tiles_path: JSON list of tiles (grid position -> source tile file), or None.
        group: Stain and scale index of every tile.
        mpp: Level-0 pixel size in µm/px, as written in the TIFF.
        mpp_is_estimate: True when ``mpp`` comes from ``estimate_ki_mpp``.
        width_px: Level-0 width.
        height_px: Level-0 height.
        level_count: Pyramid levels in the TIFF.
        tiles: Tiles in grid order.
        instances: Instances in mosaic level-0 pixels.
        content_digest: ``MosaicLayout.content_digest`` of what was written.
    """

    path: Path
    geojson_path: Path | None
    tiles_path: Path | None
    group: MosaicGroup
    mpp: float
    mpp_is_estimate: bool
    width_px: int
    height_px: int
    level_count: int
    tiles: tuple[MosaicTile, ...]
    instances: tuple[MosaicInstance, ...]
    content_digest: str

    def instances_per_class(self) -> dict[str, int]:
        """Count instances per class, sorted by class name."""
        return dict(sorted(Counter(item.class_name for item in self.instances).items()))


def group_samples(samples: Iterable[TileSample]) -> dict[MosaicGroup, tuple[TileSample, ...]]:
    """Group tiles by (stain, scale index), groups sorted, tiles sorted by image path."""
    groups: dict[MosaicGroup, list[TileSample]] = {}
    for sample in samples:
        groups.setdefault(MosaicGroup(sample.stain, sample.scale_index), []).append(sample)
    return {
        group: tuple(sorted(groups[group], key=lambda sample: str(sample.image_path)))
        for group in sorted(groups)
    }


def compose_mosaic(
    samples: Sequence[TileSample],
    gutter_px: int = DEFAULT_GUTTER_PX,
    mpp: float | None = None,
) -> MosaicLayout:
    """Place tiles of one stain and scale index in a grid and move their instances along.

    Tiles go row by row in order of their image path (class folder, then file name). The
    grid has ``ceil(sqrt(n))`` columns, and each cell is as large as the largest tile, so
    smaller tiles sit at their cell's top-left corner on glass. ``gutter_px`` of glass
    lies between cells and around the grid.

    Args:
        samples: Tiles of one stain and one scale index, at least one.
        gutter_px: Glass width in pixels, 0 or more.
        mpp: Level-0 pixel size in µm/px, or None for ``estimate_ki_mpp`` of the scale
            index.

    Raises:
        TileDatasetError: No tiles, or tiles of more than one stain or scale index.
        SettingsError: ``gutter_px`` is negative or not whole, or ``mpp`` is not positive.
    """
    if not samples:
        raise TileDatasetError("A mosaic needs at least one tile, got none.")
    groups = sorted({MosaicGroup(sample.stain, sample.scale_index) for sample in samples})
    if len(groups) > 1:
        listed = ", ".join(f"{group.stain} scale {group.scale_index}" for group in groups)
        raise TileDatasetError(
            f"A mosaic takes tiles of one stain and one scale index, got {listed}. "
            "Group them with group_samples first."
        )
    if isinstance(gutter_px, bool) or not isinstance(gutter_px, int) or gutter_px < 0:
        raise SettingsError(f"gutter_px must be a whole number of pixels >= 0, got {gutter_px!r}.")
    group = groups[0]
    mpp_is_estimate = mpp is None
    if mpp is None:
        mpp = estimate_ki_mpp(group.scale_index)
    elif isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0 < mpp < math.inf:
        raise SettingsError(f"Mosaic mpp must be a positive number of µm per pixel, got {mpp!r}.")

    ordered = sorted(samples, key=lambda sample: str(sample.image_path))
    column_count = math.ceil(math.sqrt(len(ordered)))
    row_count = math.ceil(len(ordered) / column_count)
    cell_width_px = max(sample.image_rgb.shape[1] for sample in ordered)
    cell_height_px = max(sample.image_rgb.shape[0] for sample in ordered)
    width_px = column_count * cell_width_px + (column_count + 1) * gutter_px
    height_px = row_count * cell_height_px + (row_count + 1) * gutter_px
    image_rgb = np.empty((height_px, width_px, 3), dtype=np.uint8)
    image_rgb[:] = GUTTER_RGB

    tiles: list[MosaicTile] = []
    instances: list[MosaicInstance] = []
    for index, sample in enumerate(ordered):
        row, column = divmod(index, column_count)
        x_level0 = gutter_px + column * (cell_width_px + gutter_px)
        y_level0 = gutter_px + row * (cell_height_px + gutter_px)
        tile_height_px, tile_width_px = sample.image_rgb.shape[:2]
        image_rgb[
            y_level0 : y_level0 + tile_height_px, x_level0 : x_level0 + tile_width_px
        ] = sample.image_rgb
        tiles.append(
            MosaicTile(
                index=index,
                row=row,
                column=column,
                x_level0=x_level0,
                y_level0=y_level0,
                width_px=tile_width_px,
                height_px=tile_height_px,
                source_name=Path(*sample.image_path.parts[-3:]).as_posix(),
                source_id=sample.source_id,
                image_path=sample.image_path,
                mask_path=sample.mask_path,
                class_name=sample.class_name,
            )
        )
        # Whole-pixel offsets keep every vertex on the integer grid, so areas stay exact.
        for tile_instance in sample.instances:
            instances.append(
                MosaicInstance(
                    class_name=sample.class_name,
                    polygon_level0=shapely.affinity.translate(
                        tile_instance.polygon_px, x_level0, y_level0
                    ),
                    area_px=tile_instance.area_px,
                    tile_index=index,
                    touches_tile_border=tile_instance.touches_border,
                )
            )

    logger.debug(
        "Composed %s scale %d mosaic: %d tiles in %d x %d cells, %d x %d px at %g µm/px",
        group.stain, group.scale_index, len(tiles), column_count, row_count,
        width_px, height_px, mpp,
    )
    return MosaicLayout(
        group=group,
        mpp=float(mpp),
        mpp_is_estimate=mpp_is_estimate,
        gutter_px=gutter_px,
        image_rgb=image_rgb,
        tiles=tuple(tiles),
        instances=tuple(instances),
    )


def write_tile_mosaic(
    layout: MosaicLayout, path: str | Path, write_sidecars: bool = True
) -> TileMosaic:
    """Write a composed mosaic as a pyramidal TIFF, with its GeoJSON and tile list beside it.

    With ``write_sidecars`` the instances go to ``<stem>.geojson`` (QuPath GeoJSON, one
    feature per instance, each with its tile's ``source_name``) and the tile list to
    ``<stem>.tiles.json``. Every file is written to a temporary name and renamed, and the
    TIFF comes last, so an existing TIFF means its sidecars exist too. Existing files
    are replaced.

    Args:
        layout: The mosaic from ``compose_mosaic``.
        path: Output TIFF path. Its folder must exist.
        write_sidecars: Also write the GeoJSON and the tile list.
    """
    path = Path(path)
    content_digest = layout.content_digest()
    geojson_path = tiles_path = None
    if write_sidecars:
        geojson_path = path.with_suffix(".geojson")
        tiles_path = path.with_suffix(".tiles.json")
        _write_text_atomic(geojson_path, _geojson_text(layout, content_digest))
        _write_text_atomic(tiles_path, _tiles_json_text(layout, path.name, content_digest))
    level_count = write_pyramidal_tiff(path, layout.image_rgb, layout.mpp)
    mosaic = TileMosaic(
        path=path,
        geojson_path=geojson_path,
        tiles_path=tiles_path,
        group=layout.group,
        mpp=layout.mpp,
        mpp_is_estimate=layout.mpp_is_estimate,
        width_px=layout.width_px,
        height_px=layout.height_px,
        level_count=level_count,
        tiles=layout.tiles,
        instances=layout.instances,
        content_digest=content_digest,
    )
    logger.info(
        "Wrote tile mosaic %s: %d tiles, %d x %d px at %g µm/px, instances %s",
        path, len(layout.tiles), layout.width_px, layout.height_px, layout.mpp,
        mosaic.instances_per_class(),
    )
    return mosaic


def _geojson_text(layout: MosaicLayout, content_digest: str) -> str:
    objects = []
    for index, instance in enumerate(layout.instances):
        tile = layout.tiles[instance.tile_index]
        feature_id = uuid.uuid5(_FEATURE_ID_NAMESPACE, f"{content_digest}/{index}")
        objects.append(
            AnnotationObject(
                index=index,
                geometry_level0=instance.polygon_level0,
                class_name=instance.class_name,
                measurements={"Area µm^2": instance.area_px * layout.mpp**2},
                properties={
                    "id": str(feature_id),
                    "source_tile": tile.source_name,
                    "source_id": tile.source_id,
                    "tile_index": tile.index,
                    "touches_tile_border": instance.touches_tile_border,
                },
            )
        )
    stream = io.StringIO()
    write_qupath_geojson(objects, stream)
    return stream.getvalue()


def _tiles_json_text(layout: MosaicLayout, tiff_name: str, content_digest: str) -> str:
    instance_counts = Counter(instance.tile_index for instance in layout.instances)
    document: Mapping[str, object] = {
        "slide": tiff_name,
        "stain": layout.group.stain,
        "scale_index": layout.group.scale_index,
        "mpp": layout.mpp,
        "mpp_is_estimate": layout.mpp_is_estimate,
        "gutter_px": layout.gutter_px,
        "width_px": layout.width_px,
        "height_px": layout.height_px,
        "content_digest": content_digest,
        "tiles": [
            {
                "index": tile.index,
                "row": tile.row,
                "column": tile.column,
                "x_level0": tile.x_level0,
                "y_level0": tile.y_level0,
                "width_px": tile.width_px,
                "height_px": tile.height_px,
                "source_name": tile.source_name,
                "source_id": tile.source_id,
                "mask_name": tile.mask_path.name,
                "class_name": tile.class_name,
                "instance_count": instance_counts[tile.index],
            }
            for tile in layout.tiles
        ],
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside ``path`` and rename it into place."""
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".partial", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise
