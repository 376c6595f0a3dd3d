"""Tests for ml.pyramid_tiff: level sizes, mpp and pixels as OpenSlide reads them."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from ml.errors import SettingsError
from ml.pyramid_tiff import write_pyramidal_tiff


def _gradient(width_px: int, height_px: int) -> np.ndarray:
    rows, columns = np.mgrid[0:height_px, 0:width_px]
    return np.stack(
        [columns % 256, rows % 256, (rows + columns) % 256], axis=-1
    ).astype(np.uint8)


def test_levels_sizes_and_mpp(tmp_path):
    image = _gradient(1300, 700)
    level_count = write_pyramidal_tiff(tmp_path / "odd.tif", image, 0.25)
    # 700 -> 350 -> 175: the third level would have a side below 256 px, so two levels.
    assert level_count == 2
    with openslide.OpenSlide(tmp_path / "odd.tif") as slide:
        assert slide.level_dimensions == ((1300, 700), (650, 350))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
        level0 = np.asarray(slide.read_region((0, 0), 0, (1300, 700)).convert("RGB"))
    assert np.array_equal(level0, image)


def test_small_image_is_one_level(tmp_path):
    level_count = write_pyramidal_tiff(tmp_path / "small.tif", _gradient(300, 200), 2.0)
    assert level_count == 1
    with openslide.OpenSlide(tmp_path / "small.tif") as slide:
        assert slide.level_dimensions == ((300, 200),)


def test_existing_file_replaced_without_leftovers(tmp_path):
    path = tmp_path / "slide.tif"
    write_pyramidal_tiff(path, _gradient(600, 600), 1.0)
    write_pyramidal_tiff(path, np.full((512, 512, 3), 200, dtype=np.uint8), 0.5)
    assert [entry.name for entry in tmp_path.iterdir()] == ["slide.tif"]
    with openslide.OpenSlide(path) as slide:
        assert slide.level_dimensions[0] == (512, 512)


@pytest.mark.parametrize(
    ("image", "mpp", "message"),
    [
        (np.zeros((10, 10), dtype=np.uint8), 1.0, "uint8 RGB"),
        (np.zeros((10, 10, 3), dtype=np.float32), 1.0, "uint8 RGB"),
        (np.zeros((0, 10, 3), dtype=np.uint8), 1.0, "at least 1 x 1"),
        (np.zeros((10, 10, 3), dtype=np.uint8), 0.0, "mpp"),
        (np.zeros((10, 10, 3), dtype=np.uint8), float("nan"), "mpp"),
    ],
)
def test_bad_input_rejected(tmp_path, image, mpp, message):
    with pytest.raises(SettingsError, match=message):
        write_pyramidal_tiff(tmp_path / "bad.tif", image, mpp)
    assert list(tmp_path.iterdir()) == []
