"""How ``ml.merge.merge_instances`` scales, on synthetic discs from overlapping tiles.

The objects are discs on a jittered grid, cut into tiles of 1024 px that overlap by
240 px (the proposal defaults). The tile on the left also sees a disc whose centre lies
in its overlap band, as a copy shifted by 1 px with a radius 1 px larger. So the merge
has duplicates to drop, and neighbouring discs that may overlap a little.
"""

from __future__ import annotations

import time

import numpy as np
import shapely

from benchmarks.reference_proposals import pairwise_merge
from ml.instances import Instance
from ml.merge import merge_instances

TILE_PX = 1024
OVERLAP_PX = 240
SPACING_PX = 40.0
# Tile index = row * TILE_COLUMNS + column, wide enough for any grid made here.
TILE_COLUMNS = 100_000


def synthetic_instances(count: int, seed: int = 0) -> list[Instance]:
    """Return ``count`` disc instances in level-0 pixels, about 20 % of them tile duplicates."""
    rng = np.random.default_rng(seed)
    objects = count  # More than enough, because each object gives one or two instances.
    side = int(np.ceil(np.sqrt(objects)))
    rows, columns = np.divmod(np.arange(objects), side)
    x = (columns + 0.5) * SPACING_PX + rng.uniform(-4.0, 4.0, objects)
    y = (rows + 0.5) * SPACING_PX + rng.uniform(-4.0, 4.0, objects)
    radius = rng.uniform(8.0, 19.0, objects)
    scores = rng.uniform(0.5, 1.0, objects)

    stride_px = TILE_PX - OVERLAP_PX
    tile_column = (x // stride_px).astype(int)
    tile_row = (y // stride_px).astype(int)
    in_left_band = (x - tile_column * stride_px < OVERLAP_PX) & (tile_column > 0)

    discs = shapely.buffer(shapely.points(x, y), radius, quad_segs=6)
    copies = shapely.buffer(shapely.points(x + 1.0, y), radius + 1.0, quad_segs=6)
    instances: list[Instance] = []
    for i in range(objects):
        if len(instances) >= count:
            break
        instances.append(
            Instance(discs[i], float(scores[i]), 0.95,
                     int(tile_row[i] * TILE_COLUMNS + tile_column[i]), False)
        )
        if in_left_band[i] and len(instances) < count:
            instances.append(
                Instance(copies[i], float(scores[i]) - 0.01, 0.95,
                         int(tile_row[i] * TILE_COLUMNS + tile_column[i] - 1), False)
            )
    return instances


def measure_merge_scaling(count: int, reference_count: int, seed: int = 0) -> dict:
    """Time ``merge_instances`` on ``count`` instances and both merges on ``reference_count``.

    The reference is ``pairwise_merge``, whose cost grows with the square of the count, so
    it runs on the smaller set. ``same_kept`` is True when both kept the same instances.
    """
    instances = synthetic_instances(count, seed)
    started = time.perf_counter()
    merged = merge_instances(instances)
    merge_seconds = time.perf_counter() - started

    small = synthetic_instances(reference_count, seed)
    started = time.perf_counter()
    ours_small = merge_instances(small)
    ours_small_seconds = time.perf_counter() - started
    started = time.perf_counter()
    reference_small = pairwise_merge(small)
    reference_small_seconds = time.perf_counter() - started

    return {
        "instances": count,
        "kept": len(merged.kept),
        "seconds": round(merge_seconds, 3),
        "reference_instances": reference_count,
        "reference_seconds": round(reference_small_seconds, 3),
        "ours_seconds_on_reference_instances": round(ours_small_seconds, 4),
        "ratio_on_reference_instances": _ratio(reference_small_seconds, ours_small_seconds),
        "same_kept": {id(item) for item in ours_small.kept}
        == {id(item) for item in reference_small},
    }


def _ratio(reference_seconds: float, ours_seconds: float) -> float | None:
    return round(reference_seconds / ours_seconds, 1) if ours_seconds > 0 else None
