"""Click and box prompts with a tiny random SAM on a real slide region.

The SAM weights are random, so these tests check the plumbing (window grid, embedding
cache, coordinates, polygon validity, input checks), never segmentation quality. At
2 µm/px with 256 px windows, cmu-1-small-region (2220 x 2967 level-0 px at 0.499 µm/px)
is a 554 x 741 px working frame, covered by 5 x 6 grid windows with a 128 px step.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import shapely
from segment_anything.modeling import Sam
from shapely.geometry import Point, box

from ml.errors import SettingsError
from ml.prompting import (
    PromptResult,
    PromptSegmenter,
    PromptWindow,
    mask_to_polygon_level0,
    window_for_box_px,
)
from ml.sam import load_sam
from ml.slide import Slide, WorkingFrame, open_slide
from tests.sam_factory import make_tiny_sam, save_tiny_checkpoint

MPP = 2.0
WINDOW_PX = 256
STEP_PX = WINDOW_PX // 2


@pytest.fixture(scope="module")
def slide(shared_data: Path) -> Iterator[Slide]:
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as opened:
        yield opened


@pytest.fixture(scope="module")
def frame(slide: Slide) -> WorkingFrame:
    return slide.working_frame(MPP)


@pytest.fixture(scope="module")
def tiny_sam() -> Sam:
    return make_tiny_sam(seed=1)


def make_segmenter(model: Sam, cache_size: int = 8) -> PromptSegmenter:
    return PromptSegmenter(model, mpp=MPP, window_px=WINDOW_PX, cache_size=cache_size)


def click_at_px(
    segmenter: PromptSegmenter, slide: Slide, frame: WorkingFrame, x_px: float, y_px: float
) -> PromptResult:
    """Click at a working-pixel position, sent as level-0 pixels like the browser does."""
    x_level0, y_level0 = frame.to_level0(x_px, y_px)
    return segmenter.segment_point(slide, x_level0, y_level0)


def window_box_level0(result: PromptResult, frame: WorkingFrame) -> shapely.Polygon:
    """Return the level-0 extent of the window that a result was computed in."""
    x_level0, y_level0 = result.window_origin_level0
    side_level0 = WINDOW_PX * frame.scale_level0_per_px
    return box(x_level0, y_level0, x_level0 + side_level0, y_level0 + side_level0)


def count_encoder_forwards(model: Sam) -> list[int]:
    """Record every image encoder forward pass of ``model`` into the returned list."""
    calls: list[int] = []
    model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def grid_origins_px(window_px: int, low_px: float, high_px: float) -> list[int]:
    """Return every grid origin from one window left of low_px to high_px."""
    step_px = window_px // 2
    first_px = math.floor(low_px / step_px) * step_px - window_px
    return list(range(first_px, int(high_px) + 1, step_px))


# Window grid


@pytest.mark.parametrize("x_px", [0.0, 0.2, 63.9, 64.0, 100.0, 191.5, 300.25, 553.9])
def test_window_grid_point_most_central(x_px: float) -> None:
    y_px = 740.9 - x_px  # a second coordinate, so both axes are exercised at once

    window = window_for_box_px(x_px, y_px, x_px, y_px, WINDOW_PX)

    assert window.on_grid
    assert window.size_px == WINDOW_PX
    for start_px, position_px in ((window.x_px, x_px), (window.y_px, y_px)):
        assert start_px % STEP_PX == 0
        assert position_px - start_px >= WINDOW_PX / 4
        assert start_px + WINDOW_PX - position_px >= WINDOW_PX / 4
        own_distance = abs(start_px + STEP_PX - position_px)
        for other_px in grid_origins_px(WINDOW_PX, position_px - WINDOW_PX, position_px):
            assert own_distance <= abs(other_px + STEP_PX - position_px)


def test_window_grid_nearby_points_share() -> None:
    first = window_for_box_px(256.5, 256.5, 256.5, 256.5, WINDOW_PX)
    second = window_for_box_px(200.0, 310.0, 200.0, 310.0, WINDOW_PX)

    assert first == second
    assert (first.x_px, first.y_px) == (128, 128)


@pytest.mark.parametrize(
    "box_px",
    [(10.0, 20.0, 60.0, 90.0), (120.0, 120.0, 250.0, 250.0), (500.0, 700.0, 553.0, 740.0)],
)
def test_window_grid_box_contains_box(box_px: tuple[float, float, float, float]) -> None:
    x0_px, y0_px, x1_px, y1_px = box_px

    window = window_for_box_px(x0_px, y0_px, x1_px, y1_px, WINDOW_PX)

    assert window.on_grid
    assert window.x_px <= x0_px
    assert x1_px <= window.x_px + WINDOW_PX
    assert window.y_px <= y0_px
    assert y1_px <= window.y_px + WINDOW_PX
    centre_x_px = (x0_px + x1_px) / 2
    own_distance = abs(window.x_px + STEP_PX - centre_x_px)
    for other_px in grid_origins_px(WINDOW_PX, x0_px, x1_px):
        if other_px <= x0_px and x1_px <= other_px + WINDOW_PX:
            assert own_distance <= abs(other_px + STEP_PX - centre_x_px)


def test_window_grid_wide_box_off_grid() -> None:
    # Grid windows containing x in [100, 300] would need an origin in [44, 100].
    window = window_for_box_px(100.0, 130.0, 300.0, 140.0, WINDOW_PX)

    assert not window.on_grid
    assert window.x_px == 72
    assert window.y_px == 0
    assert window.x_px <= 100.0
    assert 300.0 <= window.x_px + WINDOW_PX


def test_window_grid_full_size_box() -> None:
    # A whole-pixel origin cannot hold [100.4, 356.4], so the end overhangs by 0.4 px.
    window = window_for_box_px(100.4, 0.0, 356.4, 256.0, WINDOW_PX)

    assert (window.x_px, window.y_px) == (100, 0)
    assert not window.on_grid
    assert window.x_px <= 100.4
    assert 356.4 - (window.x_px + WINDOW_PX) == pytest.approx(0.4)


# Embedding cache


def test_same_window_click_cache_hit(slide: Slide, frame: WorkingFrame) -> None:
    model = make_tiny_sam(seed=1)
    encoder_forwards = count_encoder_forwards(model)
    segmenter = make_segmenter(model)

    first = click_at_px(segmenter, slide, frame, 256.5, 256.5)
    second = click_at_px(segmenter, slide, frame, 230.0, 290.0)

    assert not first.cache_hit
    assert second.cache_hit
    assert segmenter.encoder_runs == 1
    assert len(encoder_forwards) == 1
    assert first.window_origin_level0 == second.window_origin_level0


def test_identical_click_identical_result(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam
) -> None:
    segmenter = make_segmenter(tiny_sam)

    first = click_at_px(segmenter, slide, frame, 300.5, 400.5)
    second = click_at_px(segmenter, slide, frame, 300.5, 400.5)

    assert segmenter.encoder_runs == 1
    assert second.cache_hit
    assert first.polygon_level0 is not None
    assert second.polygon_level0 is not None
    assert first.polygon_level0.equals_exact(second.polygon_level0, tolerance=0.0)
    assert first.predicted_iou == second.predicted_iou
    assert first.mask_area_um2 == second.mask_area_um2
    assert first.point_in_mask == second.point_in_mask


def test_far_click_runs_encoder(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam)

    near = click_at_px(segmenter, slide, frame, 256.5, 256.5)
    far = click_at_px(segmenter, slide, frame, 384.5, 640.5)

    assert not far.cache_hit
    assert segmenter.encoder_runs == 2
    assert segmenter.cached_windows == 2
    assert frame.from_level0(*near.window_origin_level0) == pytest.approx((128.0, 128.0))
    assert frame.from_level0(*far.window_origin_level0) == pytest.approx((256.0, 512.0))


def test_lru_evicts_oldest_window(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam, cache_size=2)
    centres_px = [(256.5, 256.5), (384.5, 384.5), (256.5, 640.5)]

    for x_px, y_px in centres_px:
        click_at_px(segmenter, slide, frame, x_px, y_px)
    assert segmenter.encoder_runs == 3
    assert segmenter.cached_windows == 2

    evicted = click_at_px(segmenter, slide, frame, *centres_px[0])
    newest = click_at_px(segmenter, slide, frame, *centres_px[2])

    assert not evicted.cache_hit
    assert newest.cache_hit
    assert segmenter.encoder_runs == 4
    assert segmenter.cached_windows == 2


def test_lru_hit_refreshes_window(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam, cache_size=2)
    first_px, second_px, third_px = (256.5, 256.5), (384.5, 384.5), (256.5, 640.5)

    click_at_px(segmenter, slide, frame, *first_px)
    click_at_px(segmenter, slide, frame, *second_px)
    click_at_px(segmenter, slide, frame, *first_px)  # hit, so the second is now oldest
    click_at_px(segmenter, slide, frame, *third_px)  # evicts the second
    first_again = click_at_px(segmenter, slide, frame, *first_px)
    second_again = click_at_px(segmenter, slide, frame, *second_px)

    assert first_again.cache_hit
    assert not second_again.cache_hit
    assert segmenter.encoder_runs == 4


def test_clear_cache_forces_encoder(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam)
    click_at_px(segmenter, slide, frame, 256.5, 256.5)

    segmenter.clear_cache()
    again = click_at_px(segmenter, slide, frame, 256.5, 256.5)

    assert segmenter.cached_windows == 1
    assert not again.cache_hit
    assert segmenter.encoder_runs == 2


def test_concurrent_clicks_one_encoder_run(slide: Slide, frame: WorkingFrame) -> None:
    model = make_tiny_sam(seed=1)
    encoder_forwards = count_encoder_forwards(model)
    segmenter = make_segmenter(model)
    results: list[PromptResult] = []
    errors: list[BaseException] = []

    def click() -> None:
        try:
            results.append(click_at_px(segmenter, slide, frame, 300.5, 400.5))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == 4
    assert segmenter.encoder_runs == 1
    assert len(encoder_forwards) == 1
    assert sum(not result.cache_hit for result in results) == 1
    for result in results[1:]:
        assert result.polygon_level0.equals_exact(results[0].polygon_level0, tolerance=0.0)


# Polygons and coordinates


@pytest.mark.parametrize(
    "click_px", [(256.5, 256.5), (300.25, 400.75), (100.5, 600.5), (500.5, 150.5)]
)
def test_point_polygon_valid_near_click(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam, click_px: tuple[float, float]
) -> None:
    segmenter = make_segmenter(tiny_sam)
    x_level0, y_level0 = frame.to_level0(*click_px)

    result = segmenter.segment_point(slide, x_level0, y_level0)

    # The window origin maps back to a grid corner a quarter window or more from the click.
    origin_x_px, origin_y_px = frame.from_level0(*result.window_origin_level0)
    assert origin_x_px == pytest.approx(round(origin_x_px))
    assert round(origin_x_px) % STEP_PX == 0
    assert round(origin_y_px) % STEP_PX == 0
    assert WINDOW_PX / 4 <= click_px[0] - origin_x_px <= 3 * WINDOW_PX / 4
    assert WINDOW_PX / 4 <= click_px[1] - origin_y_px <= 3 * WINDOW_PX / 4

    polygon = result.polygon_level0
    assert polygon is not None
    assert polygon.is_valid
    assert box(0, 0, slide.width_px, slide.height_px).covers(polygon)
    assert window_box_level0(result, frame).buffer(1e-6).covers(polygon)
    assert result.mask_area_um2 == pytest.approx(polygon.area * slide.mpp**2)
    assert result.reason is None
    if result.point_in_mask:
        assert polygon.covers(Point(x_level0, y_level0))
    else:
        assert polygon.distance(Point(x_level0, y_level0)) <= WINDOW_PX * frame.scale_level0_per_px


def test_click_in_mask_polygon_contains_click(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam
) -> None:
    # The tiny SAM's chosen mask at this click is speckled. The traced component is the
    # one under the click, not the largest one elsewhere in the window.
    segmenter = make_segmenter(tiny_sam)

    result = segmenter.segment_point(slide, 1000.0, 1500.0)

    assert result.point_in_mask is True
    assert result.polygon_level0.covers(Point(1000.0, 1500.0))
    assert result.polygon_level0.area < (WINDOW_PX * frame.scale_level0_per_px) ** 2 / 4


def test_click_near_bottom_right_edge(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam)
    x_level0, y_level0 = slide.width_px - 0.5, slide.height_px - 0.5

    result = segmenter.segment_point(slide, x_level0, y_level0)

    origin_x_px, origin_y_px = frame.from_level0(*result.window_origin_level0)
    assert round(origin_x_px) + WINDOW_PX > frame.width_px
    assert round(origin_y_px) + WINDOW_PX > frame.height_px
    x_px, y_px = frame.from_level0(x_level0, y_level0)
    assert x_px - origin_x_px >= WINDOW_PX / 4
    assert y_px - origin_y_px >= WINDOW_PX / 4
    assert result.polygon_level0 is not None
    assert result.polygon_level0.is_valid
    min_x, min_y, max_x, max_y = result.polygon_level0.bounds
    assert min_x >= 0.0
    assert min_y >= 0.0
    assert max_x <= slide.width_px
    assert max_y <= slide.height_px


def test_click_near_corner_window_padded(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam
) -> None:
    # A click within a quarter window of the slide's edge gets a window that reaches past
    # the slide, so part of SAM's input is background padding.
    segmenter = make_segmenter(tiny_sam)

    result = segmenter.segment_point(slide, 0.0, 0.0)

    assert frame.from_level0(*result.window_origin_level0) == pytest.approx(
        (-STEP_PX, -STEP_PX)
    )
    assert result.polygon_level0 is not None
    min_x, min_y, _, _ = result.polygon_level0.bounds
    assert min_x >= 0.0
    assert min_y >= 0.0


def test_box_result_within_window(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    segmenter = make_segmenter(tiny_sam)
    box_level0_xyxy = (900.0, 1400.0, 1100.0, 1600.0)

    result = segmenter.segment_box(slide, box_level0_xyxy)

    window_level0 = window_box_level0(result, frame)
    assert window_level0.covers(box(*box_level0_xyxy))
    origin_x_px, origin_y_px = frame.from_level0(*result.window_origin_level0)
    assert round(origin_x_px) % STEP_PX == 0
    assert round(origin_y_px) % STEP_PX == 0
    assert result.point_in_mask is None
    assert result.polygon_level0 is not None
    assert result.polygon_level0.is_valid
    assert window_level0.buffer(1e-6).covers(result.polygon_level0)
    assert box(0, 0, slide.width_px, slide.height_px).covers(result.polygon_level0)


def test_box_shares_click_window_cache(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam
) -> None:
    segmenter = make_segmenter(tiny_sam)
    click = click_at_px(segmenter, slide, frame, 256.5, 256.5)
    x0_level0, y0_level0 = frame.to_level0(230.0, 230.0)
    x1_level0, y1_level0 = frame.to_level0(280.0, 290.0)

    boxed = segmenter.segment_box(slide, (x0_level0, y0_level0, x1_level0, y1_level0))

    assert boxed.cache_hit
    assert boxed.window_origin_level0 == click.window_origin_level0
    assert segmenter.encoder_runs == 1


def test_wide_box_centred_window_uncached(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam
) -> None:
    # A box that fits no grid window gets a window centred on it, which later clicks
    # never reuse, so its encoder run is not shared.
    segmenter = make_segmenter(tiny_sam)
    x0_level0, y0_level0 = frame.to_level0(100.0, 150.0)
    x1_level0, y1_level0 = frame.to_level0(300.0, 200.0)

    boxed = segmenter.segment_box(slide, (x0_level0, y0_level0, x1_level0, y1_level0))
    click = click_at_px(segmenter, slide, frame, 200.5, 175.5)

    assert frame.from_level0(*boxed.window_origin_level0)[0] == pytest.approx(72.0)
    assert window_box_level0(boxed, frame).covers(
        box(x0_level0, y0_level0, x1_level0, y1_level0)
    )
    assert not click.cache_hit
    assert segmenter.encoder_runs == 2


def test_segmenter_deterministic(slide: Slide, frame: WorkingFrame) -> None:
    results = []
    for _ in range(2):
        segmenter = make_segmenter(make_tiny_sam(seed=1))
        results.append(
            (
                click_at_px(segmenter, slide, frame, 300.25, 400.75),
                segmenter.segment_box(slide, (900.0, 1400.0, 1100.0, 1600.0)),
            )
        )

    for first, second in zip(results[0], results[1]):
        assert first.polygon_level0.equals_exact(second.polygon_level0, tolerance=0.0)
        assert first.predicted_iou == second.predicted_iou
        assert first.window_origin_level0 == second.window_origin_level0


def test_loaded_sam_matches_sam(
    slide: Slide, frame: WorkingFrame, tiny_sam: Sam, tmp_path: Path
) -> None:
    loaded = load_sam(save_tiny_checkpoint(tmp_path / "tiny_sam.pth", seed=1))

    from_loaded = click_at_px(make_segmenter(loaded), slide, frame, 300.25, 400.75)
    from_model = click_at_px(make_segmenter(tiny_sam), slide, frame, 300.25, 400.75)

    assert from_loaded.polygon_level0.equals_exact(from_model.polygon_level0, tolerance=0.0)
    assert from_loaded.predicted_iou == from_model.predicted_iou


def test_empty_mask_gives_reason(slide: Slide, frame: WorkingFrame) -> None:
    model = make_tiny_sam(seed=1)
    model.mask_threshold = 1e9  # no logit reaches it, so every mask is empty

    result = click_at_px(make_segmenter(model), slide, frame, 256.5, 256.5)

    assert result.polygon_level0 is None
    assert result.mask_area_um2 == 0.0
    assert result.point_in_mask is False
    assert "empty" in result.reason
    assert math.isfinite(result.predicted_iou)


# Mask -> level-0 polygon


@pytest.fixture
def window() -> PromptWindow:
    return PromptWindow(x_px=128, y_px=256, size_px=WINDOW_PX, on_grid=True)


def test_square_mask_exact_level0(slide: Slide, frame: WorkingFrame, window: PromptWindow) -> None:
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)
    mask[10:30, 20:50] = True  # rows 10..29, columns 20..49

    polygon = mask_to_polygon_level0(mask, window, frame, slide.info.bounds_level0)

    scale = frame.scale_level0_per_px
    expected = box((128 + 20) * scale, (256 + 10) * scale, (128 + 50) * scale, (256 + 30) * scale)
    assert polygon.is_valid
    assert polygon.normalize().equals_exact(expected.normalize(), tolerance=1e-9)
    assert polygon.area == pytest.approx(30 * 20 * scale**2)


def test_mask_hole_kept(slide: Slide, frame: WorkingFrame, window: PromptWindow) -> None:
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)
    mask[10:40, 10:40] = True
    mask[20:25, 20:30] = False

    polygon = mask_to_polygon_level0(mask, window, frame, slide.info.bounds_level0)

    assert len(polygon.interiors) == 1
    assert polygon.area == pytest.approx((900 - 50) * frame.scale_level0_per_px**2)


def test_mask_seed_picks_component(
    slide: Slide, frame: WorkingFrame, window: PromptWindow
) -> None:
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)
    mask[0:100, 0:100] = True  # the largest component
    mask[150:160, 150:170] = True

    seeded = mask_to_polygon_level0(
        mask, window, frame, slide.info.bounds_level0, seed_window_px=(155, 152)
    )
    seed_outside = mask_to_polygon_level0(
        mask, window, frame, slide.info.bounds_level0, seed_window_px=(200, 200)
    )

    assert seeded.area == pytest.approx(200 * frame.scale_level0_per_px**2)
    assert seed_outside.area == pytest.approx(10_000 * frame.scale_level0_per_px**2)


def test_mask_padding_cleared(slide: Slide, frame: WorkingFrame) -> None:
    # The window reaches 128 px past the left and top edges of the slide.
    corner = PromptWindow(x_px=-128, y_px=-128, size_px=WINDOW_PX, on_grid=True)
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)
    mask[100:160, 100:160] = True  # rows and columns 128..159 lie on the slide

    polygon = mask_to_polygon_level0(mask, corner, frame, slide.info.bounds_level0)
    only_padding = mask_to_polygon_level0(
        np.pad(np.ones((100, 100), dtype=bool), ((0, 156), (0, 156))),
        corner, frame, slide.info.bounds_level0,
    )

    scale = frame.scale_level0_per_px
    assert polygon.normalize().equals_exact(box(0, 0, 32 * scale, 32 * scale).normalize(), 1e-9)
    assert only_padding is None


def test_mask_padding_not_largest(slide: Slide, frame: WorkingFrame) -> None:
    # A component that is largest only thanks to its padding part must not win.
    corner = PromptWindow(x_px=-128, y_px=-128, size_px=WINDOW_PX, on_grid=True)
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)
    mask[0:200, 0:131] = True  # 26,200 px, of which 72 x 3 lie on the slide
    mask[180:220, 180:220] = True  # 1,600 px, all on the slide

    polygon = mask_to_polygon_level0(mask, corner, frame, slide.info.bounds_level0)

    scale = frame.scale_level0_per_px
    expected = box(52 * scale, 52 * scale, 92 * scale, 92 * scale)
    assert polygon.normalize().equals_exact(expected.normalize(), 1e-9)


def test_mask_clipped_to_slide_bounds(slide: Slide, frame: WorkingFrame) -> None:
    # The last working column (553) reaches past level-0 x = 2220 by a fraction of a pixel.
    edge = PromptWindow(x_px=384, y_px=512, size_px=WINDOW_PX, on_grid=True)
    mask = np.ones((WINDOW_PX, WINDOW_PX), dtype=bool)

    polygon = mask_to_polygon_level0(mask, edge, frame, slide.info.bounds_level0)

    assert frame.to_level0(frame.width_px, 0)[0] > slide.width_px
    assert polygon.bounds == pytest.approx(
        (384 * frame.scale_level0_per_px, 512 * frame.scale_level0_per_px,
         slide.width_px, slide.height_px)
    )


def test_empty_mask_no_polygon(slide: Slide, frame: WorkingFrame, window: PromptWindow) -> None:
    mask = np.zeros((WINDOW_PX, WINDOW_PX), dtype=bool)

    assert mask_to_polygon_level0(mask, window, frame, slide.info.bounds_level0) is None


def test_mask_wrong_shape_rejected(
    slide: Slide, frame: WorkingFrame, window: PromptWindow
) -> None:
    with pytest.raises(ValueError, match=r"\(256, 256\)"):
        mask_to_polygon_level0(np.ones((10, 10)), window, frame, slide.info.bounds_level0)


# Input checks


@pytest.mark.parametrize(
    ("x_level0", "y_level0", "field"),
    [
        (-1.0, 100.0, "x_level0=-1.0"),
        (2220.0, 100.0, "x_level0=2220.0"),
        (100.0, 2967.0, "y_level0=2967.0"),
        (100.0, 1e9, "y_level0=1000000000.0"),
    ],
)
def test_point_outside_slide_rejected(
    slide: Slide, tiny_sam: Sam, x_level0: float, y_level0: float, field: str
) -> None:
    segmenter = make_segmenter(tiny_sam)

    with pytest.raises(SettingsError, match=r"2220 x 2967 px") as error:
        segmenter.segment_point(slide, x_level0, y_level0)

    assert field in str(error.value)
    assert segmenter.encoder_runs == 0


@pytest.mark.parametrize(
    ("x_level0", "y_level0", "field"),
    [
        (float("nan"), 100.0, "x_level0"),
        (100.0, float("inf"), "y_level0"),
        ("100", 100.0, "x_level0"),
        (100.0, None, "y_level0"),
    ],
)
def test_point_not_finite_rejected(
    slide: Slide, tiny_sam: Sam, x_level0: object, y_level0: object, field: str
) -> None:
    with pytest.raises(SettingsError, match=rf"{field} must be a finite number"):
        make_segmenter(tiny_sam).segment_point(slide, x_level0, y_level0)


@pytest.mark.parametrize(
    ("box_level0_xyxy", "message"),
    [
        ((1.0, 2.0, 3.0), "four finite numbers"),
        ((1.0, 2.0, 3.0, float("nan")), "four finite numbers"),
        (None, "four finite numbers"),
        ((100.0, 100.0, 50.0, 200.0), "x0 < x1"),
        ((100.0, 100.0, 200.0, 100.0), "y0 < y1"),
        ((-5.0, 100.0, 200.0, 200.0), "x0=-5.0 is outside the slide"),
        ((100.0, 100.0, 200.0, 2968.0), "y1=2968.0 is outside the slide"),
    ],
)
def test_bad_box_rejected(
    slide: Slide, tiny_sam: Sam, box_level0_xyxy: object, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        make_segmenter(tiny_sam).segment_box(slide, box_level0_xyxy)


def test_box_larger_than_window_rejected(slide: Slide, tiny_sam: Sam) -> None:
    # One window is 256 px x 2 µm/px = 512 µm, which is 1026 level-0 px at 0.499 µm/px.
    segmenter = make_segmenter(tiny_sam)

    with pytest.raises(SettingsError, match=r"at most 512 x 512 µm") as error:
        segmenter.segment_box(slide, (100.0, 100.0, 1200.0, 300.0))

    assert "box_level0_xyxy" in str(error.value)
    assert segmenter.encoder_runs == 0


def test_box_one_window_accepted(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    side_level0 = WINDOW_PX * frame.scale_level0_per_px
    box_level0_xyxy = (100.0, 200.0, 100.0 + side_level0, 200.0 + side_level0)

    result = make_segmenter(tiny_sam).segment_box(slide, box_level0_xyxy)

    window_level0 = window_box_level0(result, frame)
    window_x0, window_y0, window_x1, window_y1 = window_level0.bounds
    assert window_x0 <= box_level0_xyxy[0]
    assert window_y0 <= box_level0_xyxy[1]
    # The window's far edges fall short of the box by under one working pixel.
    assert box_level0_xyxy[2] - window_x1 < frame.scale_level0_per_px
    assert box_level0_xyxy[3] - window_y1 < frame.scale_level0_per_px
    assert result.polygon_level0 is not None
    assert window_level0.buffer(1e-6).covers(result.polygon_level0)


def test_box_edge_to_edge_accepted(slide: Slide, frame: WorkingFrame, tiny_sam: Sam) -> None:
    result = make_segmenter(tiny_sam).segment_box(
        slide, (slide.width_px - 400.0, slide.height_px - 400.0, slide.width_px, slide.height_px)
    )

    assert result.polygon_level0 is not None
    assert box(0, 0, slide.width_px, slide.height_px).covers(result.polygon_level0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"window_px": 255}, "window_px must be even"),
        ({"window_px": 8}, r"window_px must be a whole number of pixels in \[16, 8192\]"),
        ({"window_px": 256.0}, "window_px must be a whole number"),
        ({"cache_size": 0}, "cache_size must be a whole number"),
        ({"mpp": 0.0}, r"mpp must be a number of µm/px in \[0.05, 20.0\], got 0.0"),
        ({"mpp": float("nan")}, "mpp must be a number"),
    ],
)
def test_bad_segmenter_settings_rejected(
    tiny_sam: Sam, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        PromptSegmenter(tiny_sam, **arguments)


def test_non_sam_model_rejected() -> None:
    with pytest.raises(SettingsError, match="got str"):
        PromptSegmenter("vit_b")
