"""Tests for ml.slide: opening by format, mpp sources, level choice, reads and frames."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from PIL import Image

from ml import slide as slide_module
from ml.errors import SlideError
from ml.slide import WorkingFrame, open_slide
from tests.slide_factory import (
    squares_image,
    write_plain_tiff,
    write_pyramid_tiff,
    write_sparse_wide_tiff,
)

RED = (200, 30, 60)
BLUE = (40, 60, 190)


@pytest.fixture
def squares_slide_path(tmp_path):
    """A 2048x1536 slide at 0.25 µm/px, 4 levels, with a red and a blue square."""
    image = squares_image((2048, 1536), [(512, 512, 512, RED), (1536, 0, 256, BLUE)])
    return write_pyramid_tiff(tmp_path / "squares.tif", image, mpp=0.25, level_count=4)


def test_pyramid_tiff_metadata(squares_slide_path):
    with open_slide(squares_slide_path) as slide:
        info = slide.info
    assert (info.width_px, info.height_px) == (2048, 1536)
    assert info.mpp == pytest.approx(0.25, rel=1e-9)
    assert info.mpp_source == "slide properties"
    assert info.vendor == "generic-tiff"
    assert info.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    assert info.bounds_level0 == (0, 0, 2048, 1536)
    assert info.background_rgb == (255, 255, 255)


@pytest.mark.parametrize(
    ("target_mpp", "expected_level"),
    [(0.1, 0), (0.25, 0), (0.49, 0), (0.4996, 1), (0.5, 1), (0.99, 1), (1.0, 2), (2.0, 3),
     (8.0, 3)],
)
def test_level_choice_by_mpp(squares_slide_path, target_mpp, expected_level):
    with open_slide(squares_slide_path) as slide:
        assert slide.level_for_mpp(target_mpp) == expected_level


def test_level_choice_float_downsample(shared_data):
    # This file's level 2 has downsample 4.0161..., so it is 0.4% coarser than 4x.
    path = shared_data / "wsi" / "pathml_small_HE_levels_SYNTHETIC.tiff"
    with open_slide(path, mpp=0.5) as slide:
        assert slide.info.level_downsamples[2] == pytest.approx(4.016129032258064)
        assert slide.level_for_mpp(2.0) == 1
        assert slide.level_for_mpp(2.01) == 2


@pytest.mark.parametrize("target_mpp", [0.25, 0.7, 1.0])
def test_square_colour_exact(squares_slide_path, target_mpp):
    # Level-0 window 600..900 lies inside the red square (512..1024) at every target mpp.
    with open_slide(squares_slide_path) as slide:
        w_px = round(300 * 0.25 / target_mpp)
        region = slide.read_region(600, 600, w_px, w_px, target_mpp)
    assert region.shape == (w_px, w_px, 3)
    assert region.dtype == np.uint8
    assert np.all(region == RED)


def test_region_geometry_at_coarse_mpp(squares_slide_path):
    # At 1 µm/px one output pixel is 4 level-0 px: the square's corner (512, 512) read from
    # (448, 448) lands at output pixel (16, 16).
    with open_slide(squares_slide_path) as slide:
        region = slide.read_region(448, 448, 64, 64, 1.0)
    assert np.all(region[:16, :] == 255)
    assert np.all(region[:, :16] == 255)
    assert np.all(region[16:, 16:] == RED)


def test_region_outside_slide_is_background(squares_slide_path):
    with open_slide(squares_slide_path) as slide:
        region = slide.read_region(-400, 1500, 100, 20, 1.0)
    assert region.shape == (20, 100, 3)
    assert np.all(region == 255)


def test_chunked_read_matches_single_read(squares_slide_path, monkeypatch):
    with open_slide(squares_slide_path) as slide:
        whole = slide.read_region(0, 0, 300, 200, 2.0)
        monkeypatch.setattr(slide_module, "MAX_READ_SIDE_PX", 64)
        chunked = slide.read_region(0, 0, 300, 200, 2.0)
    assert np.array_equal(whole, chunked)


def test_rgba_blended_on_white(tmp_path):
    rgba = np.zeros((512, 512, 4), dtype=np.uint8)
    rgba[..., :3] = RED
    rgba[:, :256, 3] = 0
    rgba[:, 256:, 3] = 255
    rgba[:128, 256:, 3] = 128
    path = write_pyramid_tiff(tmp_path / "rgba.tif", rgba, mpp=0.5, level_count=1)
    with open_slide(path) as slide:
        region = slide.read_region(0, 0, 512, 512, 0.5)
    assert np.all(region[:, :256] == 255)
    assert np.all(region[128:, 256:] == RED)
    half_alpha = region[:128, 256:].astype(int)
    expected = [(c * 128 + 255 * 127) / 255 for c in RED]
    # OpenSlide stores premultiplied alpha, so a half-transparent value may be 1 off.
    assert np.all(np.abs(half_alpha - np.array(expected)) <= 1.5)


def test_round_trip_far_from_origin(tmp_path):
    # A 64 px black square at level-0 x = 50,176 on a 53,248 px wide slide.
    path = write_sparse_wide_tiff(
        tmp_path / "wide.tif", (53248, 512), mpp=0.5, squares=[(50176, 128, 64, (0, 0, 0))]
    )
    with open_slide(path) as slide:
        frame = slide.working_frame(2.0)
        x_px, y_px = frame.from_level0(50176, 128)
        region = frame.read(slide, x_px - 8, y_px - 8, 32, 32)
    assert (frame.width_px, frame.height_px) == (13312, 128)
    assert (x_px, y_px) == (12544.0, 32.0)
    rows, cols = np.nonzero(region.sum(axis=2) < 100)
    found_x_level0, found_y_level0 = frame.to_level0(x_px - 8 + cols.min(), y_px - 8 + rows.min())
    assert abs(found_x_level0 - 50176) <= frame.scale_level0_per_px
    assert abs(found_y_level0 - 128) <= frame.scale_level0_per_px
    assert (cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) == (16, 16)


def test_frame_arithmetic_with_offset_bounds():
    frame = WorkingFrame(
        mpp=1.0, origin_x_level0=1000.0, origin_y_level0=250.0,
        scale_level0_per_px=1.0 / 0.2281750559028887, width_px=100, height_px=100,
    )
    x_px, y_px = frame.from_level0(98765.25, 43210.5)
    x_level0, y_level0 = frame.to_level0(x_px, y_px)
    assert x_level0 == pytest.approx(98765.25, abs=1e-6)
    assert y_level0 == pytest.approx(43210.5, abs=1e-6)
    assert frame.to_level0(0, 0) == (1000.0, 250.0)
    xs_level0, _ = frame.to_level0(np.array([0.0, 10.0]), np.array([0.0, 0.0]))
    assert xs_level0[1] - xs_level0[0] == pytest.approx(10 / 0.2281750559028887)


def test_frame_from_other_slide_rejected(squares_slide_path, tmp_path):
    other = write_pyramid_tiff(
        tmp_path / "other.tif", squares_image((256, 256), []), mpp=0.5, level_count=1
    )
    with open_slide(squares_slide_path) as slide, open_slide(other) as other_slide:
        frame = other_slide.working_frame(1.0)
        with pytest.raises(SlideError, match="working frame"):
            frame.read(slide, 0, 0, 10, 10)


@pytest.mark.parametrize(
    ("name", "width_px", "height_px", "mpp", "vendor"),
    [
        ("cmu-1-small-region.svs", 2220, 2967, 0.499, "aperio"),
        ("stritt_test3-DAPI-2-387.ndpi", 3968, 4864, 0.2281750559028887, "hamamatsu"),
        ("highdicom_sm_image.dcm", 50, 50, 0.499, "dicom"),
    ],
)
def test_real_slide_opens(shared_data, name, width_px, height_px, mpp, vendor):
    with open_slide(shared_data / "wsi" / name) as slide:
        assert (slide.width_px, slide.height_px) == (width_px, height_px)
        assert slide.mpp == pytest.approx(mpp, rel=1e-12)
        assert slide.info.mpp_source == "slide properties"
        assert slide.info.vendor == vendor
        region = slide.read_region(0, 0, 40, 30, slide.mpp * 2)
    assert region.shape == (30, 40, 3)


def test_ndpi_levels_chosen_by_mpp(shared_data):
    with open_slide(shared_data / "wsi" / "stritt_test3-DAPI-2-387.ndpi") as slide:
        assert slide.info.level_downsamples == (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
        assert slide.level_for_mpp(1.0) == 2
        assert slide.level_for_mpp(4 * 0.2281750559028887) == 2
        assert slide.level_for_mpp(16.0) == 6


def test_cmu1_thumbnail_size(shared_data):
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as slide:
        thumbnail = slide.thumbnail_rgb(max_px=512)
    assert thumbnail.rgb.shape == (512, 384, 3)
    assert thumbnail.mpp == pytest.approx(0.499 * 2967 / 512)
    # About 40% of this crop is H&E tissue, so its mean is below white.
    assert thumbnail.rgb.mean() < 230


def test_dicom_without_flavor_rejected(shared_data):
    path = shared_data / "wsi" / "pathml_small_dicom_TCGA-XK-AAJU.dcm"
    with pytest.raises(SlideError, match="OpenSlide cannot read") as caught:
        open_slide(path)
    message = str(caught.value)
    assert "pathml_small_dicom_TCGA-XK-AAJU.dcm" in message
    assert "Couldn't get image flavor" in message
    assert "Readable formats" in message


def test_implausible_mpp_rejected(shared_data):
    path = shared_data / "wsi" / "pathml_small_HE_levels_SYNTHETIC.tiff"
    with pytest.raises(SlideError, match=r"352\.858.*outside the plausible range.*--mpp"):
        open_slide(path)


def test_implausible_mpp_file_opens_with_mpp(shared_data):
    path = shared_data / "wsi" / "pathml_small_HE_levels_SYNTHETIC.tiff"
    with open_slide(path, mpp=0.5) as slide:
        assert (slide.width_px, slide.height_px) == (300, 250)
        assert slide.mpp == 0.5
        assert slide.info.mpp_source == "given"


def test_given_mpp_out_of_range_rejected(squares_slide_path):
    with pytest.raises(SlideError, match="outside the plausible range"):
        open_slide(squares_slide_path, mpp=0.01)


def test_non_slide_with_svs_name_rejected(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("These are meeting notes, not a slide.\n" * 50)
    with pytest.raises(SlideError, match="OpenSlide cannot read") as caught:
        open_slide(path)
    assert "notes.svs" in str(caught.value)


# Pillow warns about the cut-off EXIF block while it tries the file as a plain TIFF.
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_truncated_svs_rejected(shared_data, tmp_path):
    path = tmp_path / "truncated.svs"
    path.write_bytes((shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()[:100_000])
    with pytest.raises(SlideError, match="OpenSlide cannot read") as caught:
        open_slide(path)
    assert "truncated.svs" in str(caught.value)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "absent.svs")


def test_png_needs_mpp(tmp_path):
    path = tmp_path / "region.png"
    Image.fromarray(squares_image((120, 80), [(40, 20, 30, RED)])).save(path)
    with pytest.raises(SlideError, match=r"has no pixel size \(mpp\).*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.info.vendor == "image"
        assert (slide.width_px, slide.height_px) == (120, 80)
        region = slide.read_region(40, 20, 30, 30, 0.5)
    assert np.all(region == RED)


def test_png_transparency_blended(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., :3] = BLUE
    rgba[:, 20:, 3] = 255
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)
    with open_slide(path, mpp=1.0) as slide:
        region = slide.read_region(0, 0, 40, 40, 1.0)
    assert np.all(region[:, :20] == 255)
    assert np.all(region[:, 20:] == BLUE)


@pytest.mark.parametrize("unit", ["CENTIMETER", "INCH"])
def test_tiled_tiff_resolution_units(tmp_path, unit):
    path = write_pyramid_tiff(
        tmp_path / "unit.tif", squares_image((256, 256), []), mpp=0.5, level_count=1,
        resolution_unit=unit,
    )
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-9)


def test_plain_tiff_mpp_from_tags(tmp_path):
    path = write_plain_tiff(tmp_path / "plain.tif", squares_image((64, 48), []), mpp=0.5)
    with open_slide(path) as slide:
        assert slide.info.vendor == "image"
        assert slide.info.mpp_source == "TIFF resolution tags"
        assert slide.mpp == pytest.approx(0.5, rel=1e-9)


def test_tiff_without_unit_needs_mpp(tmp_path):
    path = write_pyramid_tiff(
        tmp_path / "nounit.tif", squares_image((256, 256), []), mpp=None, level_count=1
    )
    with pytest.raises(SlideError, match="has no pixel size"):
        open_slide(path)


def test_non_square_pixels_rejected(tmp_path):
    path = write_pyramid_tiff(
        tmp_path / "aniso.tif", squares_image((256, 256), []), mpp=0.5, mpp_y=0.52,
        level_count=1,
    )
    with pytest.raises(SlideError, match="different pixel sizes in x"):
        open_slide(path)


def test_working_frame_covers_bounds(shared_data):
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as slide:
        frame = slide.working_frame(1.0)
    assert frame.scale_level0_per_px == pytest.approx(1.0 / 0.499)
    assert frame.width_px == math.ceil(2220 * 0.499)
    assert frame.height_px == math.ceil(2967 * 0.499)


def test_bad_region_size_rejected(squares_slide_path):
    with open_slide(squares_slide_path) as slide:
        with pytest.raises(SlideError, match="whole pixels"):
            slide.read_region(0, 0, 0, 10, 1.0)
        with pytest.raises(SlideError, match="positive number"):
            slide.read_region(0, 0, 10, 10, -1.0)


def test_copied_slide_opens(shared_data, tmp_path):
    # A byte copy under another name opens the same, because the format is read from content.
    path = tmp_path / "copy.svs"
    shutil.copyfile(shared_data / "wsi" / "cmu-1-small-region.svs", path)
    with open_slide(path) as slide:
        assert (slide.width_px, slide.height_px) == (2220, 2967)


@pytest.mark.parametrize("kept_bytes", [1_280_000, 1_900_000])
def test_svs_cut_after_first_image_rejected(shared_data, tmp_path, kept_bytes):
    # Pillow can read the first strip of such a file as a plain TIFF; a .svs must not be
    # opened that way, or the message asks the user for an mpp of a damaged file.
    path = tmp_path / "cut.svs"
    path.write_bytes((shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()[:kept_bytes])
    with pytest.raises(SlideError, match="may be truncated") as caught:
        open_slide(path, mpp=0.499)
    assert "cut.svs" in str(caught.value)
