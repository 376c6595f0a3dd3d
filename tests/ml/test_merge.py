"""Merging instances across tiles: exact survivors for each rule, order independence, speed."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from ml.instances import Instance
from ml.merge import CONFLICT_OVERLAP, DUPLICATE_OVERLAP, merge_instances


def instance(
    x0: float, y0: float, x1: float, y1: float, tile: int, iou: float = 0.9,
    fragment: bool = False,
) -> Instance:
    return Instance(
        polygon_level0=box(x0, y0, x1, y1), predicted_iou=iou, stability_score=0.95,
        tile_index=tile, touches_interior_edge=fragment,
    )


def test_fragment_inside_whole_dropped() -> None:
    whole = instance(0, 0, 100, 100, tile=0, iou=0.80)
    fragment = instance(0, 0, 40, 100, tile=1, iou=0.99, fragment=True)

    result = merge_instances([fragment, whole])

    assert result.kept == (whole,)
    assert result.dropped_duplicate == (fragment,)
    assert result.dropped_conflict == ()


def test_fragment_partial_overlap_loses() -> None:
    whole = instance(0, 0, 100, 100, tile=0, iou=0.80)
    fragment = instance(60, 0, 130, 100, tile=1, iou=0.99, fragment=True)  # overlap 40/70

    result = merge_instances([fragment, whole])

    assert result.kept == (whole,)
    assert result.dropped_conflict == (fragment,)


def test_duplicate_keeps_larger() -> None:
    larger = instance(0, 0, 100, 100, tile=0, iou=0.70)
    smaller = instance(10, 0, 109, 100, tile=1, iou=0.99)  # 9000 / 9900 = 0.909

    result = merge_instances([smaller, larger])

    assert result.kept == (larger,)
    assert result.dropped_duplicate == (smaller,)


def test_just_below_duplicate_uses_iou() -> None:
    larger = instance(0, 0, 100, 100, tile=0, iou=0.70)
    smaller = instance(11, 0, 110, 100, tile=1, iou=0.99)  # 8900 / 9900 = 0.899
    overlap = 8900 / 9900
    assert CONFLICT_OVERLAP < overlap < DUPLICATE_OVERLAP

    result = merge_instances([larger, smaller])

    assert result.kept == (smaller,)
    assert result.dropped_conflict == (larger,)


def test_duplicate_at_exact_threshold() -> None:
    first = instance(0, 0, 100, 100, tile=0, iou=0.70)
    second = instance(10, 0, 110, 100, tile=1, iou=0.90)  # 9000 / 10000 = 0.9, equal areas

    result = merge_instances([first, second])

    assert result.kept == (second,)  # equal area: higher predicted IoU
    assert result.dropped_duplicate == (first,)


def test_conflict_keeps_higher_iou() -> None:
    low = instance(0, 0, 100, 100, tile=0, iou=0.90)
    high = instance(50, 0, 150, 100, tile=1, iou=0.95)  # overlap 0.5

    result = merge_instances([low, high])

    assert result.kept == (high,)
    assert result.dropped_conflict == (low,)


def test_conflict_tie_larger_then_tile() -> None:
    small = instance(0, 0, 100, 100, tile=0, iou=0.9)
    large = instance(50, 0, 160, 100, tile=1, iou=0.9)
    assert merge_instances([small, large]).kept == (large,)

    left = instance(0, 0, 100, 100, tile=3, iou=0.9)
    right = instance(50, 0, 150, 100, tile=2, iou=0.9)
    assert merge_instances([left, right]).kept == (right,)


def test_both_fragments_use_iou() -> None:
    first = instance(0, 0, 100, 100, tile=0, iou=0.95, fragment=True)
    second = instance(50, 0, 150, 100, tile=1, iou=0.90, fragment=True)

    assert merge_instances([first, second]).kept == (first,)


def test_same_tile_never_compared() -> None:
    outer = instance(0, 0, 100, 100, tile=4)
    inner = instance(10, 10, 50, 50, tile=4)
    overlapping = instance(50, 0, 150, 100, tile=4)

    result = merge_instances([outer, inner, overlapping])

    assert Counter(result.kept) == Counter([outer, inner, overlapping])


def test_chain_of_three_middle_wins() -> None:
    left = instance(0, 0, 100, 100, tile=0, iou=0.90)
    middle = instance(60, 0, 160, 100, tile=1, iou=0.95)
    right = instance(120, 0, 220, 100, tile=2, iou=0.90)

    result = merge_instances([left, middle, right])

    assert result.kept == (middle,)
    assert Counter(result.dropped_conflict) == Counter([left, right])


def test_chain_of_three_ends_survive() -> None:
    left = instance(0, 0, 100, 100, tile=0, iou=0.95)
    middle = instance(60, 0, 160, 100, tile=1, iou=0.90)
    right = instance(120, 0, 220, 100, tile=2, iou=0.85)

    result = merge_instances([right, middle, left])

    assert Counter(result.kept) == Counter([left, right])
    assert result.dropped_conflict == (middle,)


def test_touching_neighbours_both_kept() -> None:
    shared_edge = [instance(0, 0, 50, 50, tile=0), instance(50, 0, 100, 50, tile=1)]
    # A 2 px sliver: 100 / 2500 = 4% of the smaller area, under CONFLICT_OVERLAP.
    sliver = [instance(0, 100, 50, 150, tile=0), instance(48, 100, 98, 150, tile=1)]

    result = merge_instances(shared_edge + sliver)

    assert Counter(result.kept) == Counter(shared_edge + sliver)


def test_empty_input() -> None:
    result = merge_instances([])

    assert result.kept == ()
    assert result.dropped_duplicate == ()
    assert result.dropped_conflict == ()


instance_strategy = st.builds(
    instance,
    x0=st.integers(0, 60),
    y0=st.integers(0, 60),
    x1=st.integers(61, 120),
    y1=st.integers(61, 120),
    tile=st.integers(0, 3),
    iou=st.sampled_from([0.80, 0.90, 0.95]),
    fragment=st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(instance_strategy, max_size=12), st.randoms(use_true_random=False))
def test_result_independent_of_order(instances: list[Instance], random) -> None:
    shuffled = list(instances)
    random.shuffle(shuffled)

    original = merge_instances(instances)
    permuted = merge_instances(shuffled)

    assert Counter(original.kept) == Counter(permuted.kept)
    assert Counter(original.dropped_duplicate) == Counter(permuted.dropped_duplicate)
    assert Counter(original.dropped_conflict) == Counter(permuted.dropped_conflict)
    assert original.kept == permuted.kept
    everything = original.kept + original.dropped_duplicate + original.dropped_conflict
    assert Counter(everything) == Counter(instances)
    # No two kept instances from different tiles overlap by more than the conflict limit.
    for i, first in enumerate(original.kept):
        for second in original.kept[i + 1 :]:
            if first.tile_index == second.tile_index:
                continue
            shared = first.polygon_level0.intersection(second.polygon_level0).area
            assert shared <= CONFLICT_OVERLAP * min(first.area_level0, second.area_level0)


# Proposals drop masks under 100 um2 before merging, 100 px at 1 um/px.
MIN_AREA_PX = 100


def synthetic_tiled_instances(spacing_px: float, tiles_per_side: int) -> list[Instance]:
    """Return discs on a jittered grid, seen by every tile that covers them, like real tiling.

    Tiles are 1024 px with a 240 px overlap, so objects near tile borders appear two or
    four times, cut (fragments) where a tile edge crosses them, with outlines shifted by up
    to 1 px between tiles. Neighbouring discs touch or overlap slightly, like tubules.
    Pieces under MIN_AREA_PX are left out, as the area filter before merging does.
    """
    rng = np.random.default_rng(0)
    stride_px = 1024 - 240
    axis_px = np.arange(20, stride_px * tiles_per_side, spacing_px)
    centres = np.array([(x, y) for x in axis_px for y in axis_px])
    centres += rng.uniform(-2, 2, size=centres.shape)
    radii = rng.uniform(0.45, 0.55, size=len(centres)) * spacing_px
    instances = []
    for row in range(tiles_per_side):
        for col in range(tiles_per_side):
            tile = row * tiles_per_side + col
            x0, y0 = col * stride_px, row * stride_px
            inside = (
                (centres[:, 0] + radii > x0) & (centres[:, 0] - radii < x0 + 1024)
                & (centres[:, 1] + radii > y0) & (centres[:, 1] - radii < y0 + 1024)
            )
            indexes = np.nonzero(inside)[0]
            shift = rng.uniform(-1, 1, size=(len(indexes), 2))
            discs = shapely.buffer(
                shapely.points(centres[indexes] + shift), radii[indexes], quad_segs=8
            )
            clipped = shapely.clip_by_rect(discs, x0, y0, x0 + 1024, y0 + 1024)
            for disc, polygon in zip(discs, clipped):
                if polygon.geom_type != "Polygon" or polygon.area < MIN_AREA_PX:
                    continue
                cut = polygon.area < disc.area - 1e-6
                instances.append(Instance(polygon, float(rng.uniform(0.8, 1.0)), 0.95, tile, cut))
    return instances


def test_100k_instances_merge_fast() -> None:
    instances = synthetic_tiled_instances(spacing_px=25.0, tiles_per_side=8)
    assert len(instances) >= 100_000

    start = time.perf_counter()
    result = merge_instances(instances)
    elapsed_s = time.perf_counter() - start

    print(f"\nmerge_instances: {len(instances)} instances in {elapsed_s:.2f} s, "
          f"{len(result.kept)} kept, {len(result.dropped_duplicate)} duplicates, "
          f"{len(result.dropped_conflict)} conflicts")
    total = len(result.kept) + len(result.dropped_duplicate) + len(result.dropped_conflict)
    assert total == len(instances)
    assert not any(kept.touches_interior_edge for kept in result.kept)
    assert len(result.dropped_duplicate) > 0


def test_greedy_drop_not_revived() -> None:
    """Limitation: a duplicate dropped in pass 1 stays dropped when pass 2 drops its keeper."""
    inner = instance(0, 0, 40, 40, tile=0, iou=0.90)
    keeper = instance(0, 0, 100, 100, tile=1, iou=0.80)  # contains inner: duplicate
    rival = instance(60, 0, 160, 100, tile=2, iou=0.95)  # overlaps keeper by 0.4: conflict
    assert not inner.polygon_level0.intersects(rival.polygon_level0)

    result = merge_instances([inner, keeper, rival])

    assert result.kept == (rival,)
    assert result.dropped_duplicate == (inner,)
    assert result.dropped_conflict == (keeper,)
