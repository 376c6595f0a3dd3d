"""Tests for ml.sample_slide: the written pyramid and the returned truth agree."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from shapely.geometry import Point

from ml import sample_slide
from ml.errors import SettingsError
from ml.sample_slide import write_sample_slide
from ml.slide import open_slide
from ml.tissue import detect_tissue


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.tif"
    return write_sample_slide(path)


def _component_at_centre(crop_rgb: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Return the (H, W) bool component of pixels near ``rgb`` that contains the crop centre."""
    near = np.abs(crop_rgb.astype(int) - rgb).max(axis=2) <= 12
    _, labels = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
    centre_label = labels[crop_rgb.shape[0] // 2, crop_rgb.shape[1] // 2]
    assert centre_label != 0
    return labels == centre_label


def test_sample_pyramid_metadata(default_sample):
    truth = default_sample
    with open_slide(truth.path) as slide:
        assert (slide.width_px, slide.height_px) == (6144, 4608)
        assert slide.mpp == pytest.approx(0.5, rel=1e-9)
        assert slide.info.mpp_source == "slide properties"
        assert slide.info.vendor == "generic-tiff"
        assert slide.info.level_downsamples == (1.0, 2.0, 4.0, 8.0, 16.0)
    assert truth.level_count == 5
    assert (truth.width_px, truth.height_px) == (6144, 4608)


def test_sample_object_counts_and_layout(default_sample):
    truth = default_sample
    assert len(truth.objects_labelled("glomerulus")) == sample_slide.GLOMERULUS_COUNT
    assert len(truth.objects_labelled("tubule")) == sample_slide.TUBULE_COUNT
    for obj in truth.objects:
        assert truth.tissue_level0.contains(obj.polygon_level0)
    centres = np.array([obj.center_level0 for obj in truth.objects])
    radii = np.array([obj.radius_level0 for obj in truth.objects])
    distances = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    assert np.all(distances > radii[:, None] + radii[None, :])


def test_tubule_lumen_drawn_at_truth(default_sample):
    truth = default_sample
    with open_slide(truth.path) as slide:
        for tubule in truth.objects_labelled("tubule")[:20]:
            x, y = tubule.center_level0
            half = math.ceil(tubule.radius_level0) + 10
            crop = slide.read_region(x - half, y - half, 2 * half, 2 * half, 0.5)
            lumen = _component_at_centre(crop, sample_slide.LUMEN_RGB)
            rows, cols = np.nonzero(lumen)
            # The read's origin is rounded to a whole pixel, hence the 1 px tolerance.
            assert x - half + cols.mean() + 0.5 == pytest.approx(x, abs=1.0)
            assert y - half + rows.mean() + 0.5 == pytest.approx(y, abs=1.0)
            lumen_radius_px = tubule.radius_level0 - sample_slide.TUBULE_WALL_UM / 0.5
            assert lumen.sum() == pytest.approx(math.pi * lumen_radius_px**2, rel=0.04)


def test_glomerulus_bowman_space_at_truth(default_sample):
    truth = default_sample
    with open_slide(truth.path) as slide:
        for glomerulus in truth.objects_labelled("glomerulus"):
            x, y = glomerulus.center_level0
            half = math.ceil(glomerulus.radius_level0) + 10
            crop = slide.read_region(x - half, y - half, 2 * half, 2 * half, 0.5)
            near = np.abs(crop.astype(int) - sample_slide.BOWMAN_SPACE_RGB).max(axis=2) <= 12
            outer_px = glomerulus.radius_level0
            inner_px = outer_px - sample_slide.BOWMAN_SPACE_UM / 0.5
            expected_ring_px = math.pi * (outer_px**2 - inner_px**2)
            assert near.sum() == pytest.approx(expected_ring_px, rel=0.1)


def test_tissue_detected_on_sample(default_sample):
    truth = default_sample
    with open_slide(truth.path) as slide:
        tissue = detect_tissue(slide)
    difference = tissue.polygons_level0.symmetric_difference(truth.tissue_level0).area
    assert difference / truth.tissue_level0.area < 0.02


def test_sample_seed_repeatable(tmp_path):
    first = write_sample_slide(tmp_path / "a.tif", size_level0=(1024, 768), seed=3)
    again = write_sample_slide(tmp_path / "b.tif", size_level0=(1024, 768), seed=3)
    other = write_sample_slide(tmp_path / "c.tif", size_level0=(1024, 768), seed=4)
    assert [o.center_level0 for o in first.objects] == [o.center_level0 for o in again.objects]
    assert [o.center_level0 for o in first.objects] != [o.center_level0 for o in other.objects]
    with open_slide(first.path) as a, open_slide(again.path) as b:
        first_rgb = a.read_region(0, 0, 512, 384, 1.0)
        again_rgb = b.read_region(0, 0, 512, 384, 1.0)
    assert np.array_equal(first_rgb, again_rgb)


def test_sample_other_mpp_keeps_micron_sizes(tmp_path):
    truth = write_sample_slide(tmp_path / "coarse.tif", mpp=1.0, size_level0=(2048, 1536))
    with open_slide(truth.path) as slide:
        assert slide.mpp == pytest.approx(1.0, rel=1e-9)
    for glomerulus in truth.objects_labelled("glomerulus"):
        assert 80.0 <= glomerulus.radius_level0 <= 100.0


@pytest.mark.parametrize(
    ("mpp", "size_level0"), [(0.0, (1024, 1024)), (30.0, (1024, 1024)), (0.5, (100, 1024))]
)
def test_sample_bad_settings_rejected(tmp_path, mpp, size_level0):
    with pytest.raises(SettingsError, match="Sample slide"):
        write_sample_slide(tmp_path / "bad.tif", mpp=mpp, size_level0=size_level0)


def test_scar_makes_atrophic_tubules_and_sclerotic_glomeruli(tmp_path):
    truth = write_sample_slide(
        tmp_path / "scarred.tif", size_level0=(3072, 2304), seed=7, scar_fraction=0.2,
        sclerotic_glomeruli=2,
    )
    assert truth.scar_level0.area == pytest.approx(0.2 * truth.tissue_level0.area, rel=0.01)
    assert truth.tissue_level0.contains(truth.scar_level0)
    atrophic = truth.objects_labelled("atrophic tubule")
    assert len(atrophic) > 20
    low_um, high_um = sample_slide.ATROPHIC_TUBULE_RADIUS_UM
    for tubule in atrophic:
        assert truth.scar_level0.contains(Point(tubule.center_level0))
        assert low_um / truth.mpp <= tubule.radius_level0 <= high_um / truth.mpp
    for tubule in truth.objects_labelled("tubule"):
        assert not truth.scar_level0.contains(Point(tubule.center_level0))
    assert len(truth.objects_labelled("sclerotic glomerulus")) == 2
    with open_slide(truth.path) as slide:
        x, y = (round(v) for v in truth.objects_labelled("sclerotic glomerulus")[0].center_level0)
        crop = slide.read_region(x - 15, y - 15, 31, 31, truth.mpp)
    median_rgb = np.median(crop.reshape(-1, 3), axis=0)
    assert np.abs(median_rgb - sample_slide.SCLEROTIC_TUFT_RGB).max() <= 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"scar_fraction": 0.9}, "scar_fraction must be within 0..0.8"),
     ({"sclerotic_glomeruli": 7}, "sclerotic_glomeruli must be a whole number within 0..6")],
)
def test_scar_settings_rejected(tmp_path, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        write_sample_slide(tmp_path / "bad.tif", size_level0=(512, 512), **kwargs)
