"""Whole-slide proposals with a tiny random SAM on a real H&E slide region.

The SAM weights are random, so these tests check the plumbing (tiling, filters, units,
counts, merge, determinism), never segmentation quality.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

from ml.errors import SettingsError
from ml.proposals import (
    COUNT_KEYS,
    MASK_OUTCOMES,
    ProposalResult,
    ProposalSettings,
    propose,
)
from ml.sam import LoadedSam, load_sam
from ml.slide import Slide, WorkingFrame, open_slide
from ml.tiling import tile_grid
from ml.tissue import TissueMask, detect_tissue
from tests.sam_factory import save_tiny_checkpoint

# 4 x 4 prompts and no quality thresholds, so that random weights still yield masks.
TINY_SETTINGS = ProposalSettings(
    mpp=1.0, points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
)


@dataclass(frozen=True)
class Run:
    result: ProposalResult
    progress_calls: list[tuple[int, int]]
    encoder_calls: int


@pytest.fixture(scope="module")
def slide(shared_data: Path) -> Iterator[Slide]:
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as opened:
        yield opened


@pytest.fixture(scope="module")
def tissue(slide: Slide) -> TissueMask:
    return detect_tissue(slide)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> LoadedSam:
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")
    return load_sam(checkpoint)


def run_proposals(
    slide: Slide, tiny_sam: LoadedSam, tissue: TissueMask, settings: ProposalSettings
) -> Run:
    """Run propose and record progress calls and image encoder forward passes."""
    progress_calls: list[tuple[int, int]] = []
    encoder_calls: list[int] = []
    hook = tiny_sam.model.image_encoder.register_forward_hook(
        lambda *_: encoder_calls.append(1)
    )
    try:
        result = propose(
            slide, tiny_sam, settings, tissue,
            progress=lambda done, total: progress_calls.append((done, total)),
        )
    finally:
        hook.remove()
    return Run(result, progress_calls, len(encoder_calls))


@pytest.fixture(scope="module")
def first_run(slide: Slide, tiny_sam: LoadedSam, tissue: TissueMask) -> Run:
    return run_proposals(slide, tiny_sam, tissue, TINY_SETTINGS)


def test_grid_and_progress(first_run: Run, slide: Slide) -> None:
    frame = slide.working_frame(1.0)
    expected_tiles = len(tile_grid(frame.width_px, frame.height_px, 1024, 240))

    assert first_run.result.tiles_total == expected_tiles == 4
    assert first_run.result.overlap_px == 240
    assert first_run.progress_calls == [(done, 4) for done in range(1, 5)]
    assert first_run.encoder_calls == first_run.result.tiles_processed


def test_some_masks_kept(first_run: Run) -> None:
    counts = first_run.result.counts

    assert counts["masks_generated"] > 0
    assert counts["kept"] > 0
    assert counts["kept"] == len(first_run.result.instances)


def test_counts_add_up(first_run: Run) -> None:
    counts = first_run.result.counts

    assert set(counts) == set(COUNT_KEYS)
    assert all(type(value) is int for value in counts.values())
    assert counts["masks_generated"] == sum(counts[key] for key in MASK_OUTCOMES)
    assert counts["tiles_total"] == counts["tiles_processed"] + counts["tiles_skipped_no_tissue"]
    assert counts["tiles_processed"] == first_run.result.tiles_processed


def test_kept_polygons_pass_filters(first_run: Run, slide: Slide, tissue: TissueMask) -> None:
    scale = slide.working_frame(1.0).scale_level0_per_px
    max_area_level0 = 0.04 * 1024 * 1024 * scale**2
    min_area_level0 = 100.0 / slide.mpp**2
    slide_box = box(0, 0, slide.info.width_px, slide.info.height_px)

    for instance in first_run.result.instances:
        polygon = instance.polygon_level0
        assert polygon.is_valid
        assert slide_box.contains(polygon)
        assert instance.area_level0 < max_area_level0
        assert instance.area_level0 >= min_area_level0
        assert tissue.fraction_of_geometry(polygon) >= 0.5


def test_fragment_flag_matches_geometry(first_run: Run, slide: Slide) -> None:
    frame = slide.working_frame(1.0)
    tiles = tile_grid(frame.width_px, frame.height_px, 1024, 240)

    for instance in first_run.result.instances:
        tile = tiles[instance.tile_index]
        x0_px, y0_px, x1_px, y1_px = shapely.bounds(
            shapely.transform(
                instance.polygon_level0,
                lambda coords: (coords - [frame.origin_x_level0, frame.origin_y_level0])
                / frame.scale_level0_per_px - [tile.x_px, tile.y_px],
            )
        )
        # Clipping to the level-0 bounds can move an edge by under one working pixel.
        expected = tile.touches_interior_edge(x0_px, y0_px, x1_px, y1_px, margin_px=1.5)
        assert instance.touches_interior_edge == expected


def test_same_output_twice(first_run: Run, slide: Slide, tiny_sam: LoadedSam,
                           tissue: TissueMask) -> None:
    second_run = run_proposals(slide, tiny_sam, tissue, TINY_SETTINGS)

    assert second_run.result.counts == first_run.result.counts
    assert second_run.result.instances == first_run.result.instances


def test_no_tissue_tiles_skip_encoder(slide: Slide, tiny_sam: LoadedSam,
                                      tissue: TissueMask) -> None:
    settings = ProposalSettings(
        **{**TINY_SETTINGS.to_dict(), "min_tile_tissue_fraction": 1.0}
    )

    run = run_proposals(slide, tiny_sam, tissue, settings)

    assert run.encoder_calls == 0
    assert run.result.counts["tiles_skipped_no_tissue"] == 4
    assert run.result.counts["masks_generated"] == 0
    assert run.result.instances == ()
    # Progress counts tiles with tissue, so a slide without any reports none.
    assert run.progress_calls == []


def test_settings_defaults() -> None:
    settings = ProposalSettings()

    assert settings.resolved_overlap_px == 240
    assert settings.max_area_px == pytest.approx(0.04 * 1024 * 1024)
    assert settings.to_dict()["overlap_px"] is None


def test_settings_dict_round_trip() -> None:
    stored = TINY_SETTINGS.to_dict()

    assert ProposalSettings.from_dict(stored) == TINY_SETTINGS
    assert ProposalSettings.from_dict({"tile_px": 512}).tile_px == 512


def test_settings_unknown_key_rejected() -> None:
    with pytest.raises(SettingsError, match=r"Unknown proposal settings \['tile_size'\]"):
        ProposalSettings.from_dict({"tile_size": 512})


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("mpp", 0.0, r"\[0.05, 20.0\]"),
        ("tile_px", 1024.5, r"\[64, 8192\]"),
        ("tile_px", True, r"\[64, 8192\]"),
        ("overlap_px", 1024, r"\[0, 1023\]"),
        ("points_per_side", 0, r"\[1, 256\]"),
        ("pred_iou_thresh", 1.5, r"\[0.0, 1.0\]"),
        ("box_nms_thresh", float("nan"), r"\[0.0, 1.0\]"),
        ("max_area_fraction", 0.0, r"\(0.0, 1.0\]"),
        ("min_area_um2", -1.0, r"\[0.0, inf\]"),
        ("min_mask_tissue_fraction", "0.5", r"\[0.0, 1.0\]"),
    ],
)
def test_settings_range_errors(field: str, value: object, allowed: str) -> None:
    with pytest.raises(SettingsError, match=f"{field} must be .* in {allowed}"):
        ProposalSettings(**{field: value})


def test_area_limit_needing_overlap_beyond_tile_rejected():
    with pytest.raises(SettingsError, match="max_area_fraction 0.8 needs a tile overlap of 1040"):
        ProposalSettings(max_area_fraction=0.8)
    assert ProposalSettings(max_area_fraction=0.8, overlap_px=240).resolved_overlap_px == 240


def test_tiles_are_read_ahead_in_a_reader_thread(
    first_run: Run, slide: Slide, tiny_sam: LoadedSam, tissue: TissueMask, monkeypatch
) -> None:
    reads: list[tuple[str, int, int]] = []
    original_read = WorkingFrame.read

    def recording_read(frame, slide_, x_px, y_px, w_px, h_px):
        reads.append((threading.current_thread().name, x_px, y_px))
        return original_read(frame, slide_, x_px, y_px, w_px, h_px)

    monkeypatch.setattr(WorkingFrame, "read", recording_read)
    run = run_proposals(slide, tiny_sam, tissue, TINY_SETTINGS)

    assert len(reads) == run.result.tiles_processed == first_run.result.tiles_processed
    assert all(name.startswith("tile-read") for name, _, _ in reads)
    assert run.result.instances == first_run.result.instances
