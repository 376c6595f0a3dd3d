"""Tests for ml.tiling: grid coverage, overlap, edges and the overlap size rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml.errors import SettingsError
from ml.tiling import Tile, overlap_for_max_area, tile_grid


@st.composite
def grid_settings(draw):
    tile_px = draw(st.integers(min_value=1, max_value=1024))
    overlap_px = draw(st.integers(min_value=0, max_value=tile_px - 1))
    # At most about 30 tiles per side, so a stride of 1 px stays fast.
    max_side_px = tile_px + 29 * (tile_px - overlap_px)
    width_px = draw(st.integers(min_value=1, max_value=max_side_px))
    height_px = draw(st.integers(min_value=1, max_value=max_side_px))
    return width_px, height_px, tile_px, overlap_px


def _starts(tiles: list[Tile], axis: str) -> list[int]:
    return sorted({getattr(tile, axis) for tile in tiles})


@given(grid_settings())
def test_grid_covers_image(settings):
    width_px, height_px, tile_px, overlap_px = settings
    tiles = tile_grid(width_px, height_px, tile_px, overlap_px)
    # Coverage per axis is enough because the grid is the product of the two axes.
    covered_x = np.zeros(width_px, dtype=bool)
    covered_y = np.zeros(height_px, dtype=bool)
    for tile in tiles:
        covered_x[tile.x_px : tile.x_px + tile.w_px] = True
        covered_y[tile.y_px : tile.y_px + tile.h_px] = True
    assert covered_x.all()
    assert covered_y.all()
    assert len(tiles) == len(_starts(tiles, "x_px")) * len(_starts(tiles, "y_px"))


@given(grid_settings())
def test_grid_tiles_inside_and_unique(settings):
    width_px, height_px, tile_px, overlap_px = settings
    tiles = tile_grid(width_px, height_px, tile_px, overlap_px)
    positions = [(tile.x_px, tile.y_px) for tile in tiles]
    assert len(set(positions)) == len(positions)
    assert [tile.index for tile in tiles] == list(range(len(tiles)))
    for tile in tiles:
        assert (tile.w_px, tile.h_px) == (tile_px, tile_px)
        assert tile.x_px >= 0
        assert tile.y_px >= 0
        if width_px >= tile_px:
            assert tile.x_px + tile.w_px <= width_px
        else:
            assert tile.x_px == 0
        if height_px >= tile_px:
            assert tile.y_px + tile.h_px <= height_px
        else:
            assert tile.y_px == 0


@given(grid_settings())
def test_grid_neighbours_overlap(settings):
    width_px, height_px, tile_px, overlap_px = settings
    tiles = tile_grid(width_px, height_px, tile_px, overlap_px)
    for starts in (_starts(tiles, "x_px"), _starts(tiles, "y_px")):
        for previous, current in zip(starts, starts[1:]):
            assert previous + tile_px - current >= overlap_px
            assert current - previous <= tile_px - overlap_px


@given(grid_settings())
def test_grid_ends_at_image_edge(settings):
    width_px, height_px, tile_px, overlap_px = settings
    tiles = tile_grid(width_px, height_px, tile_px, overlap_px)
    assert max(tile.x_px + tile.w_px for tile in tiles) == max(width_px, tile_px)
    assert max(tile.y_px + tile.h_px for tile in tiles) == max(height_px, tile_px)
    assert min(tile.x_px for tile in tiles) == 0
    assert min(tile.y_px for tile in tiles) == 0


@given(grid_settings())
def test_interior_edges_match_neighbours(settings):
    width_px, height_px, tile_px, overlap_px = settings
    tiles = tile_grid(width_px, height_px, tile_px, overlap_px)
    for tile in tiles:
        assert tile.left_interior == (tile.x_px > 0)
        assert tile.top_interior == (tile.y_px > 0)
        assert tile.right_interior == (tile.x_px + tile.w_px < width_px)
        assert tile.bottom_interior == (tile.y_px + tile.h_px < height_px)


def test_grid_known_layout():
    tiles = tile_grid(2500, 1024, tile_px=1024, overlap_px=240)
    assert [(tile.x_px, tile.y_px) for tile in tiles] == [(0, 0), (784, 0), (1476, 0)]
    assert [tile.col for tile in tiles] == [0, 1, 2]
    assert (tiles[0].left_interior, tiles[0].right_interior) == (False, True)
    assert (tiles[2].left_interior, tiles[2].right_interior) == (True, False)
    assert not any(tile.top_interior or tile.bottom_interior for tile in tiles)


def test_small_image_single_tile():
    tiles = tile_grid(300, 200, tile_px=1024, overlap_px=240)
    assert len(tiles) == 1
    tile = tiles[0]
    assert (tile.x_px, tile.y_px, tile.w_px, tile.h_px) == (0, 0, 1024, 1024)
    assert not (tile.left_interior or tile.top_interior)
    assert not (tile.right_interior or tile.bottom_interior)


def test_default_overlap_is_240():
    tiles = tile_grid(2048, 1024)
    assert [tile.x_px for tile in tiles] == [0, 784, 1024]


@pytest.mark.parametrize("overlap_px", [-1, 1024, 2000, 10.5])
def test_bad_overlap_rejected(overlap_px):
    with pytest.raises(SettingsError, match="overlap_px"):
        tile_grid(4000, 4000, tile_px=1024, overlap_px=overlap_px)


@pytest.mark.parametrize(("width_px", "tile_px"), [(0, 1024), (100, 0), (100.5, 1024)])
def test_bad_sizes_rejected(width_px, tile_px):
    with pytest.raises(SettingsError, match="whole number >= 1"):
        tile_grid(width_px, 100, tile_px=tile_px, overlap_px=0)


def test_touches_interior_edge():
    grid = tile_grid(3000, 3000, tile_px=1024, overlap_px=240)
    middle = next(tile for tile in grid if (tile.row, tile.col) == (1, 1))
    assert middle.touches_interior_edge(0, 500, 100, 600)
    assert middle.touches_interior_edge(500, 500, 1023, 600)
    assert not middle.touches_interior_edge(100, 100, 900, 900)
    corner = tile_grid(3000, 3000, tile_px=1024, overlap_px=240)[0]
    assert not corner.touches_interior_edge(0, 0, 100, 100)
    assert corner.touches_interior_edge(900, 0, 1024, 100)


def test_overlap_for_paper_limit():
    assert overlap_for_max_area(0.04 * 1024 * 1024) == 240


@given(st.floats(min_value=1.0, max_value=1e7), st.integers(min_value=1, max_value=64))
def test_overlap_holds_largest_disk(max_area_px, multiple):
    overlap_px = overlap_for_max_area(max_area_px, multiple)
    diameter_px = 2 * math.sqrt(max_area_px / math.pi)
    assert overlap_px % multiple == 0
    assert overlap_px >= diameter_px - 1e-6
    assert overlap_px - multiple < diameter_px


@pytest.mark.parametrize("max_area_px", [0.0, -5.0, float("nan"), float("inf")])
def test_overlap_bad_area_rejected(max_area_px):
    with pytest.raises(SettingsError, match="max_area_px"):
        overlap_for_max_area(max_area_px)


def test_elongated_object_cut_in_every_tile():
    # Shows the disk-diameter limitation: a 400x100 px bar is below 4% of a 1024 px tile
    # (40,000 < 41,943 px) but longer than the 240 px overlap, so a bar straddling the
    # seam between two tiles fits in neither.
    overlap_px = overlap_for_max_area(0.04 * 1024 * 1024)
    tiles = tile_grid(1808, 1024, tile_px=1024, overlap_px=overlap_px)
    assert [tile.x_px for tile in tiles] == [0, 784]
    bar_x0_px, bar_x1_px = 700, 1100
    assert (bar_x1_px - bar_x0_px) * 100 < 0.04 * 1024 * 1024
    whole_in = [t for t in tiles if t.x_px <= bar_x0_px and bar_x1_px <= t.x_px + t.w_px]
    assert whole_in == []
