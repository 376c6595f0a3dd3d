"""Overlapping SAM input tiles over a WorkingFrame, with which tile edges are interior.

A tile here is a SAM input tile in working pixels, not a deep-zoom viewer tile. Tiles
overlap by more than the largest allowed object, so an object cut by one tile's interior
edge lies whole in a neighbour, and the merge step can drop the cut copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ml.errors import SettingsError

DEFAULT_TILE_PX = 1024
# Proposals larger than this fraction of the tile area are dropped, so the default overlap
# is sized for a disk of that area.
DEFAULT_MAX_OBJECT_FRACTION = 0.04


@dataclass(frozen=True)
class Tile:
    """One tile of a grid, in working pixels of a WorkingFrame.

    Attributes:
        index: Position in the grid's row-major order, from 0.
        x_px: Left edge.
        y_px: Top edge.
        w_px: Width, which may reach past the image when the image is smaller.
        h_px: Height.
        row: Grid row, from 0 at the top.
        col: Grid column, from 0 at the left.
        left_interior: The left edge is inside the image, shared with a neighbour tile.
        top_interior: The top edge is shared with a neighbour tile.
        right_interior: The right edge is shared with a neighbour tile.
        bottom_interior: The bottom edge is shared with a neighbour tile.
    """

    index: int
    x_px: int
    y_px: int
    w_px: int
    h_px: int
    row: int
    col: int
    left_interior: bool
    top_interior: bool
    right_interior: bool
    bottom_interior: bool

    def touches_interior_edge(
        self, x0_px: float, y0_px: float, x1_px: float, y1_px: float, margin_px: float = 1.0
    ) -> bool:
        """Return whether a box (tile-local xyxy pixels) lies within margin_px of an interior edge.

        A mask that touches an interior edge may be cut by the tile, so the merge step
        should prefer the neighbour's copy of it.
        """
        return (
            (self.left_interior and x0_px <= margin_px)
            or (self.top_interior and y0_px <= margin_px)
            or (self.right_interior and x1_px >= self.w_px - margin_px)
            or (self.bottom_interior and y1_px >= self.h_px - margin_px)
        )


def overlap_for_max_area(max_area_px: float, multiple: int = 16) -> int:
    """Return the tile overlap for objects up to ``max_area_px`` working pixels in area.

    That is the diameter of a disk of that area, rounded up to a multiple of ``multiple``.
    For a 1024 px tile and a 4% limit (41,943 px) it is 240.
    """
    if not (max_area_px > 0 and math.isfinite(max_area_px)):
        raise SettingsError(f"max_area_px must be a positive number, got {max_area_px!r}.")
    if int(multiple) != multiple or multiple < 1:
        raise SettingsError(f"multiple must be a whole number >= 1, got {multiple!r}.")
    # Limitation: an elongated object longer than this diameter can be cut in every tile.
    diameter_px = 2.0 * math.sqrt(max_area_px / math.pi)
    return int(math.ceil(diameter_px / multiple - 1e-9) * multiple)


def tile_grid(
    width_px: int, height_px: int, tile_px: int = DEFAULT_TILE_PX, overlap_px: int | None = None
) -> list[Tile]:
    """Cover a width_px x height_px image with square tiles, edge to edge, row-major.

    Tiles start at 0 with a stride of ``tile_px - overlap_px``. The last row and column
    are shifted back so that they end exactly at the image edge, which makes their
    overlap larger. An image side shorter than a tile gets one tile of ``tile_px`` at 0,
    which reaches past the image and is padded by the reader.

    Args:
        width_px: Image width in working pixels.
        height_px: Image height in working pixels.
        tile_px: Tile side in working pixels.
        overlap_px: Minimum overlap of neighbouring tiles in working pixels. The default
            (None) is ``overlap_for_max_area`` of 4% of the tile area.

    Raises:
        SettingsError: A size is not a positive whole number, or overlap_px is negative or
            not smaller than tile_px.
    """
    for name, value in (("width_px", width_px), ("height_px", height_px), ("tile_px", tile_px)):
        if int(value) != value or value < 1:
            raise SettingsError(f"{name} must be a whole number >= 1, got {value!r}.")
    if overlap_px is None:
        overlap_px = overlap_for_max_area(DEFAULT_MAX_OBJECT_FRACTION * tile_px * tile_px)
    if int(overlap_px) != overlap_px or not 0 <= overlap_px < tile_px:
        raise SettingsError(
            f"overlap_px must be a whole number with 0 <= overlap_px < tile_px ({tile_px}), "
            f"got {overlap_px!r}."
        )

    xs_px = _tile_starts(int(width_px), int(tile_px), int(overlap_px))
    ys_px = _tile_starts(int(height_px), int(tile_px), int(overlap_px))
    tiles = []
    for row, y_px in enumerate(ys_px):
        for col, x_px in enumerate(xs_px):
            tiles.append(
                Tile(
                    index=len(tiles),
                    x_px=x_px,
                    y_px=y_px,
                    w_px=int(tile_px),
                    h_px=int(tile_px),
                    row=row,
                    col=col,
                    left_interior=col > 0,
                    top_interior=row > 0,
                    right_interior=col < len(xs_px) - 1,
                    bottom_interior=row < len(ys_px) - 1,
                )
            )
    return tiles


def _tile_starts(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    if length_px <= tile_px:
        return [0]
    stride_px = tile_px - overlap_px
    starts = list(range(0, length_px - tile_px, stride_px))
    starts.append(length_px - tile_px)
    return starts
