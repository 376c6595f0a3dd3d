"""Tests for ml.tissue on a synthetic slide with known tissue, and on real slides."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import Point

from ml.errors import SlideError
from ml.slide import WorkingFrame, open_slide
from ml.tissue import TissueMask, detect_tissue
from tests.slide_factory import write_pyramid_tiff

# Synthetic slide: 2048x2048 px at 2 µm/px. A pink tissue disk with a glass hole, a black
# scan-border strip on the left and a transparent margin at the bottom.
SLIDE_MPP = 2.0
DISK_CENTER_LEVEL0 = (1100, 900)
DISK_RADIUS_LEVEL0 = 600
HOLE_CENTER_LEVEL0 = (1250, 800)
HOLE_RADIUS_LEVEL0 = 125
BORDER_WIDTH_LEVEL0 = 100
TRANSPARENT_FROM_Y_LEVEL0 = 1850


@pytest.fixture(scope="module")
def tissue_slide_path(tmp_path_factory):
    rng = np.random.default_rng(7)
    height, width = 2048, 2048
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    glass = np.array([243, 241, 245]) + rng.integers(-4, 5, size=(height, width, 1))
    rgba[..., :3] = np.clip(glass, 0, 255)

    tissue = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(tissue, DISK_CENTER_LEVEL0, DISK_RADIUS_LEVEL0, 1, thickness=-1)
    cv2.circle(tissue, HOLE_CENTER_LEVEL0, HOLE_RADIUS_LEVEL0, 0, thickness=-1)
    pink = np.array([214, 142, 192]) + rng.integers(-12, 13, size=(height, width, 1))
    rgba[tissue == 1, :3] = np.clip(pink, 0, 255)[tissue == 1]
    # Purple nuclei scattered over the tissue.
    for _ in range(3000):
        x, y = rng.integers(0, width), rng.integers(0, height)
        if tissue[y, x]:
            cv2.circle(rgba, (int(x), int(y)), 3, (120, 60, 150, 255), thickness=-1)

    rgba[:, :BORDER_WIDTH_LEVEL0, :3] = 12
    # Transparent, but pink underneath: only blending by alpha makes it glass.
    rgba[TRANSPARENT_FROM_Y_LEVEL0:, :, :3] = (214, 142, 192)
    rgba[TRANSPARENT_FROM_Y_LEVEL0:, :, 3] = 0
    path = tmp_path_factory.mktemp("tissue") / "tissue_disk.tif"
    return write_pyramid_tiff(path, rgba, mpp=SLIDE_MPP, level_count=4)


@pytest.fixture(scope="module")
def tissue_mask(tissue_slide_path):
    with open_slide(tissue_slide_path) as slide:
        return detect_tissue(slide)


def test_default_mask_mpp(tissue_mask):
    assert tissue_mask.mpp == 4.0
    assert tissue_mask.mask.shape == (1024, 1024)
    assert tissue_mask.origin_level0 == (0.0, 0.0)


def test_tissue_area_matches_truth(tissue_mask):
    truth_um2 = math.pi * (DISK_RADIUS_LEVEL0**2 - HOLE_RADIUS_LEVEL0**2) * SLIDE_MPP**2
    assert tissue_mask.area_um2 == pytest.approx(truth_um2, rel=0.03)
    polygons_um2 = tissue_mask.polygons_level0.area * SLIDE_MPP**2
    assert polygons_um2 == pytest.approx(truth_um2, rel=0.03)


def test_polygons_valid_with_hole(tissue_mask):
    polygons = tissue_mask.polygons_level0
    assert polygons.is_valid
    assert len(polygons.geoms) == 1
    disk = polygons.geoms[0]
    assert len(disk.interiors) == 1
    hole_area = shapely.Polygon(disk.interiors[0]).area
    assert hole_area == pytest.approx(math.pi * HOLE_RADIUS_LEVEL0**2, rel=0.1)


def test_border_and_margin_excluded(tissue_mask):
    assert tissue_mask.fraction_in_box(0, 0, BORDER_WIDTH_LEVEL0, 2048) == 0.0
    assert tissue_mask.fraction_in_box(0, TRANSPARENT_FROM_Y_LEVEL0, 2048, 198) == 0.0


def test_fraction_in_box_inside_disk(tissue_mask):
    assert tissue_mask.fraction_in_box(800, 900, 100, 100) == 1.0


def test_fraction_of_geometry_cases(tissue_mask):
    inside = Point(800, 900).buffer(40)
    outside = Point(1900, 200).buffer(40)
    on_edge = Point(DISK_CENTER_LEVEL0[0] - DISK_RADIUS_LEVEL0, DISK_CENTER_LEVEL0[1]).buffer(40)
    assert tissue_mask.fraction_of_geometry(inside) == 1.0
    assert tissue_mask.fraction_of_geometry(outside) == 0.0
    assert tissue_mask.fraction_of_geometry(on_edge) == pytest.approx(0.5, abs=0.08)
    assert tissue_mask.fraction_of_geometry(Point(800, 900)) == 0.0


def test_fraction_of_geometry_many(tissue_mask):
    rng = np.random.default_rng(1)
    centres = rng.uniform(100, 1900, size=(2000, 2))
    geometries = [Point(x, y).buffer(30) for x, y in centres]
    fractions = [tissue_mask.fraction_of_geometry(g) for g in geometries]
    expected = [tissue_mask.polygons_level0.intersection(g).area / g.area for g in geometries]
    assert fractions == pytest.approx(expected, abs=0.05)


def test_fraction_in_box_partial_pixels():
    frame = WorkingFrame(
        mpp=1.0, origin_x_level0=0.0, origin_y_level0=0.0, scale_level0_per_px=2.0,
        width_px=10, height_px=10,
    )
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    tissue = TissueMask.from_mask(mask, frame)
    assert tissue.fraction_in_box(0, 0, 20, 20) == 0.5
    assert tissue.fraction_in_box(9, 0, 2, 20) == 0.5
    assert tissue.fraction_in_box(-20, 0, 40, 20) == 0.25
    assert tissue.fraction_in_box(100, 100, 10, 10) == 0.0
    assert tissue.area_um2 == 50.0
    assert tissue.polygons_level0.area == pytest.approx(50 * 4.0)


def test_fraction_in_box_rejects_empty_box():
    frame = WorkingFrame(1.0, 0.0, 0.0, 1.0, 4, 4)
    tissue = TissueMask.from_mask(np.ones((4, 4), dtype=bool), frame)
    with pytest.raises(SlideError, match="Box size must be positive"):
        tissue.fraction_in_box(0, 0, 0, 5)


def test_mask_shape_must_match_frame():
    frame = WorkingFrame(1.0, 0.0, 0.0, 1.0, 4, 3)
    with pytest.raises(SlideError, match=r"shape \(3, 4\)"):
        TissueMask.from_mask(np.ones((4, 4), dtype=bool), frame)


def test_cmu1_tissue_fraction(shared_data):
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as slide:
        tissue = detect_tissue(slide)
        bounds = slide.info.bounds_level0
    # Measured 0.385 when written, because the crop is about 40% H&E skin tissue on glass.
    assert 0.33 <= tissue.fraction_in_box(*bounds) <= 0.44
    assert tissue.polygons_level0.is_valid


def test_blank_dicom_has_no_tissue(shared_data):
    with open_slide(shared_data / "wsi" / "highdicom_sm_image.dcm") as slide:
        tissue = detect_tissue(slide)
    assert tissue.area_um2 == 0.0
    assert tissue.polygons_level0.is_empty


def test_fluorescence_slide_warns(shared_data, caplog):
    # Shows the brightfield-only limitation: on this DAPI slide, nucleus-dense areas
    # count as tissue, and only a warning flags it.
    with caplog.at_level(logging.WARNING, logger="ml.tissue"):
        with open_slide(shared_data / "wsi" / "stritt_test3-DAPI-2-387.ndpi") as slide:
            tissue = detect_tissue(slide)
    assert "fluorescence" in caplog.text
    assert 0.2 < tissue.mask.mean() < 0.9
