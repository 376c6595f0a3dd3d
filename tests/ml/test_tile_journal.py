"""A run interrupted after some tiles and resumed from its journal ends as an uninterrupted run.

The weights are tiny and random: these tests check that the resumed run skips the
journaled tiles and that its merged instances and counts equal the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from shapely.geometry import Polygon

from ml.class_aware import from_sam
from ml.instances import Instance
from ml.proposals import ProposalSettings, propose
from ml.sam import LoadedSam, load_sam
from ml.segmentation import SegmentationSettings, segment_slide
from ml.slide import Slide, open_slide
from ml.tile_journal import MemoryJournal, decode_instance, encode_instance
from ml.tissue import TissueMask, detect_tissue
from tests.sam_factory import make_tiny_sam, save_tiny_checkpoint

PROPOSAL_SETTINGS = ProposalSettings(
    mpp=1.0, points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
)
SEGMENTATION_SETTINGS = SegmentationSettings(
    mpp=1.0, points_per_side=4, points_per_batch=16, min_predicted_iou=0.0,
    min_class_probability=0.0,
)
TILES_BEFORE_CRASH = 2


class WorkerCrash(BaseException):
    """Stands in for a killed worker: no ``except Exception`` handler catches it."""


class CrashingJournal(MemoryJournal):
    """Records tiles until ``crash_after`` of them are stored, then raises WorkerCrash."""

    def __init__(self, crash_after: int) -> None:
        super().__init__()
        self.crash_after = crash_after

    def record_tile(self, tile_index: int, payload: dict) -> None:
        super().record_tile(tile_index, payload)
        if len(self.tiles) == self.crash_after:
            raise WorkerCrash


class CountingJournal(MemoryJournal):
    """Starts from another journal's tiles and lists the tiles recorded since."""

    def __init__(self, tiles: dict[int, dict]) -> None:
        super().__init__()
        self.tiles = dict(tiles)
        self.recorded: list[int] = []

    def record_tile(self, tile_index: int, payload: dict) -> None:
        super().record_tile(tile_index, payload)
        self.recorded.append(tile_index)


@pytest.fixture(scope="module")
def slide(shared_data: Path) -> Iterator[Slide]:
    with open_slide(shared_data / "wsi" / "cmu-1-small-region.svs") as opened:
        yield opened


@pytest.fixture(scope="module")
def tissue(slide: Slide) -> TissueMask:
    return detect_tissue(slide)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> LoadedSam:
    return load_sam(save_tiny_checkpoint(tmp_path_factory.mktemp("sam") / "tiny_sam.pth"))


@pytest.fixture(scope="module")
def uninterrupted_proposals(slide: Slide, tissue: TissueMask, tiny_sam: LoadedSam):
    result = propose(slide, tiny_sam, PROPOSAL_SETTINGS, tissue)
    assert result.tiles_processed > TILES_BEFORE_CRASH
    assert len(result.instances) > 0
    return result


def _outlines(instances) -> list[bytes]:
    return [instance.polygon_level0.wkb for instance in instances]


def test_instance_round_trip_is_exact() -> None:
    shell = [(0.1, 0.2), (100.000001, 0.3), (99.7, 80.123456789), (0.4, 79.9)]
    hole = [(10.5, 10.5), (20.25, 10.5), (20.25, 20.75), (10.5, 20.75)]
    instance = Instance(
        polygon_level0=Polygon(shell, [hole]), predicted_iou=0.8765432,
        stability_score=0.91, tile_index=7, touches_interior_edge=True,
    )

    decoded = decode_instance(encode_instance(instance), tile_index=7)

    assert decoded.polygon_level0.wkb == instance.polygon_level0.wkb
    assert decoded.predicted_iou == instance.predicted_iou
    assert decoded.stability_score == instance.stability_score
    assert decoded.touches_interior_edge is True
    assert decoded.tile_index == 7


def test_proposals_resume_from_journal(
    slide: Slide, tissue: TissueMask, tiny_sam: LoadedSam, uninterrupted_proposals
) -> None:
    uninterrupted = uninterrupted_proposals
    tiles_with_tissue = uninterrupted.tiles_processed

    crashing = CrashingJournal(crash_after=TILES_BEFORE_CRASH)
    with pytest.raises(WorkerCrash):
        propose(slide, tiny_sam, PROPOSAL_SETTINGS, tissue, journal=crashing)
    resumed_journal = CountingJournal(crashing.tiles)
    progress: list[tuple[int, int]] = []
    resumed = propose(
        slide, tiny_sam, PROPOSAL_SETTINGS, tissue, journal=resumed_journal,
        progress=lambda done, total: progress.append((done, total)),
    )

    assert len(resumed_journal.recorded) == tiles_with_tissue - TILES_BEFORE_CRASH
    assert set(resumed_journal.recorded).isdisjoint(crashing.tiles)
    assert progress[-1] == (tiles_with_tissue, tiles_with_tissue)
    assert resumed.counts == uninterrupted.counts
    assert _outlines(resumed.instances) == _outlines(uninterrupted.instances)
    assert [i.predicted_iou for i in resumed.instances] == [
        i.predicted_iou for i in uninterrupted.instances
    ]


def test_segmentation_resumes_from_journal(slide: Slide, tissue: TissueMask) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model, _ = from_sam(make_tiny_sam(1), ["glomerulus", "vessel", "background"])
    uninterrupted = segment_slide(slide, model, SEGMENTATION_SETTINGS, tissue)
    tiles_with_tissue = uninterrupted.tiles_processed
    assert tiles_with_tissue > TILES_BEFORE_CRASH
    assert len(uninterrupted.instances) > 0

    crashing = CrashingJournal(crash_after=TILES_BEFORE_CRASH)
    with pytest.raises(WorkerCrash):
        segment_slide(slide, model, SEGMENTATION_SETTINGS, tissue, journal=crashing)
    resumed_journal = CountingJournal(crashing.tiles)
    resumed = segment_slide(slide, model, SEGMENTATION_SETTINGS, tissue, journal=resumed_journal)

    assert len(resumed_journal.recorded) == tiles_with_tissue - TILES_BEFORE_CRASH
    assert resumed.counts == uninterrupted.counts
    assert resumed.kept_per_class == uninterrupted.kept_per_class
    assert _outlines(resumed.instances) == _outlines(uninterrupted.instances)
    assert [(i.class_name, i.class_probability) for i in resumed.instances] == [
        (i.class_name, i.class_probability) for i in uninterrupted.instances
    ]


def test_journal_of_other_tiles_is_ignored(
    slide: Slide, tissue: TissueMask, tiny_sam: LoadedSam, uninterrupted_proposals
) -> None:
    # A row for a tile index outside this grid (another grid's tile) is not replayed.
    journal = CountingJournal({10_000: {"instances": [], "counts": {"masks_generated": 99}}})

    result = propose(slide, tiny_sam, PROPOSAL_SETTINGS, tissue, journal=journal)

    assert len(journal.recorded) == result.tiles_processed
    assert result.counts == uninterrupted_proposals.counts
