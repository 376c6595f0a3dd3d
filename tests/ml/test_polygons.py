"""Mask tracing in pixel-edge coordinates and the tile -> level-0 mapping."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from shapely.geometry import LineString, Polygon

from ml.polygons import (
    largest_component_polygon,
    make_valid_polygons,
    mask_to_polygons,
    polygon_px_to_level0,
)
from ml.slide import WorkingFrame
from ml.tiling import Tile


def rasterise(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Return the (H, W) mask of pixels whose centre lies inside any polygon."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inside = np.zeros(shape, dtype=bool)
    for polygon in polygons:
        inside |= shapely.contains_xy(polygon, cols + 0.5, rows + 0.5)
    return inside


def test_square_area_exact() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:12, 3:13] = True

    polygons = mask_to_polygons(mask)

    assert len(polygons) == 1
    assert polygons[0].area == 100.0
    assert polygons[0].bounds == (3.0, 2.0, 13.0, 12.0)
    assert len(polygons[0].exterior.coords) == 5  # collinear vertices removed


def test_single_pixel() -> None:
    mask = np.zeros((3, 4), dtype=bool)
    mask[1, 2] = True

    polygons = mask_to_polygons(mask)

    assert [polygon.bounds for polygon in polygons] == [(2.0, 1.0, 3.0, 2.0)]
    assert polygons[0].area == 1.0


def test_pixel_at_image_corner() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[4, 4] = True

    assert mask_to_polygons(mask)[0].bounds == (4.0, 4.0, 5.0, 5.0)


def test_ring_keeps_hole() -> None:
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:11, 1:11] = True
    mask[4:7, 4:8] = False

    polygons = mask_to_polygons(mask)

    assert len(polygons) == 1
    assert len(polygons[0].interiors) == 1
    assert polygons[0].area == 100 - 12
    assert Polygon(polygons[0].interiors[0]).area == 12
    assert polygons[0].is_valid


def test_two_components_sorted_by_area() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[1:3, 1:3] = True
    mask[4:9, 10:18] = True

    polygons = mask_to_polygons(mask)

    assert [polygon.area for polygon in polygons] == [40.0, 4.0]


def test_diagonal_pixels_separate() -> None:
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=bool)

    polygons = mask_to_polygons(mask)

    assert len(polygons) == 3
    assert all(polygon.is_valid and polygon.area == 1.0 for polygon in polygons)


def test_hole_touching_shell_at_corner() -> None:
    mask = np.ones((3, 3), dtype=bool)
    mask[0, 0] = False
    mask[1, 1] = False

    polygons = mask_to_polygons(mask)

    assert len(polygons) == 1
    assert polygons[0].is_valid
    assert polygons[0].area == 7.0
    assert np.array_equal(rasterise(polygons, mask.shape), mask)


def test_empty_mask() -> None:
    assert mask_to_polygons(np.zeros((8, 8), dtype=bool)) == []


def test_non_2d_mask_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        mask_to_polygons(np.zeros((2, 3, 4), dtype=bool))


def assert_round_trip(mask: np.ndarray) -> list[Polygon]:
    """Trace ``mask`` and check that the polygons are valid and rasterise back to it."""
    polygons = mask_to_polygons(mask)
    height, width = mask.shape

    for polygon in polygons:
        assert isinstance(polygon, Polygon)
        assert polygon.is_valid
        assert not polygon.is_empty
        x_min, y_min, x_max, y_max = polygon.bounds
        assert 0 <= x_min < x_max <= width
        assert 0 <= y_min < y_max <= height
    # One polygon per 4-connected component, and the areas are the pixel counts exactly.
    component_count = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)[0] - 1
    assert len(polygons) == component_count
    assert sum(polygon.area for polygon in polygons) == mask.sum()
    assert np.array_equal(rasterise(polygons, mask.shape), mask)
    # Separate polygons share no area.
    union_area = shapely.union_all(polygons).area if polygons else 0.0
    assert union_area == mask.sum()
    return polygons


@settings(max_examples=800, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_random_masks_round_trip(mask: np.ndarray) -> None:
    assert_round_trip(mask)


KI_ROOT = Path("kidney_tiles") / "omniseg_KI"


@functools.cache
def real_masks(shared_data: Path) -> tuple[np.ndarray, ...]:
    """Return every PAS mask of the KI tiles as an (H, W) bool array, read once."""
    masks = []
    for path in sorted((shared_data / KI_ROOT).glob("*/pas/*_mask_*.png")):
        with Image.open(path) as image:
            masks.append(np.asarray(image.convert("L")) > 127)
    return tuple(masks)


@settings(max_examples=800, deadline=None)
@given(data=st.data())
def test_real_mask_crops_round_trip(shared_data: Path, data: st.DataObject) -> None:
    masks = real_masks(shared_data)
    full = masks[data.draw(st.integers(0, len(masks) - 1), label="mask")]
    height, width = data.draw(st.tuples(st.integers(1, 64), st.integers(1, 64)), label="size")
    top = data.draw(st.integers(0, full.shape[0] - height), label="top")
    left = data.draw(st.integers(0, full.shape[1] - width), label="left")
    mask = full[top : top + height, left : left + width].copy()
    if data.draw(st.booleans(), label="transpose"):
        mask = mask.T.copy()
    # Flipped pixels add specks, holes and pixels that touch only at a corner.
    for _ in range(data.draw(st.integers(0, 30), label="flips")):
        row = data.draw(st.integers(0, mask.shape[0] - 1))
        col = data.draw(st.integers(0, mask.shape[1] - 1))
        mask[row, col] = not mask[row, col]

    polygons = assert_round_trip(mask)

    largest = largest_component_polygon(mask)
    assert largest.component_count == len(polygons)
    if polygons:
        assert largest.polygon.area == polygons[0].area
        assert largest.polygon.is_valid
    else:
        assert largest.polygon is None


def test_make_valid_repairs_bowtie() -> None:
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    assert not bowtie.is_valid

    parts = make_valid_polygons(bowtie)

    assert len(parts) == 2
    assert all(part.is_valid for part in parts)
    assert sum(part.area for part in parts) == pytest.approx(2.0)


def test_make_valid_drops_lines() -> None:
    assert make_valid_polygons(LineString([(0, 0), (1, 1)])) == []
    assert make_valid_polygons(Polygon([(0, 0), (1, 1), (2, 2)])) == []


def test_px_to_level0_uses_frame_and_tile() -> None:
    frame = WorkingFrame(
        mpp=1.0, origin_x_level0=100.0, origin_y_level0=50.0, scale_level0_per_px=2.0,
        width_px=500, height_px=400,
    )
    tile = Tile(index=3, row=1, col=1, x_px=200, y_px=300, w_px=256, h_px=256,
                left_interior=True, top_interior=True, right_interior=False,
                bottom_interior=False)
    square_tile_px = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])

    square_level0 = polygon_px_to_level0(square_tile_px, frame, tile)

    # x_level0 = 100 + (x_tile + 200) * 2, y_level0 = 50 + (y_tile + 300) * 2
    assert square_level0.bounds == (500.0, 650.0, 520.0, 670.0)
    assert square_level0.area == 400.0
    assert square_level0.is_valid
