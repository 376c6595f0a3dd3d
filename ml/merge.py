"""Merge instances from overlapping tiles into one set without duplicates.

Rule. Only pairs of instances from different tiles are compared, because SAM's own box
NMS has already settled overlaps within a tile. For such a pair, let ``overlap`` be the
area of their intersection divided by the area of the smaller one:

1. Duplicate: ``overlap >= DUPLICATE_OVERLAP`` (0.9). Both are one object, and the
   larger one is kept. Ties go to the higher predicted IoU, then the lower tile index.
2. Conflict: ``CONFLICT_OVERLAP < overlap < DUPLICATE_OVERLAP`` (0.1 to 0.9). If exactly
   one of them touches an interior tile edge (``touches_interior_edge``, a possible cut
   fragment), the other is kept. Otherwise the higher predicted IoU is kept. Ties go to
   the larger area, then the lower tile index.
3. Otherwise both are kept. Touching neighbours (a tubule next to a tubule) overlap by a
   pixel-wide sliver where the masks of two tiles disagree, and that must not count as a
   conflict. CONFLICT_OVERLAP = 0.1 is an estimate. A 2 px sliver along a quarter of the
   outline of a 50 um tubule at 1 um/px is about 4% of its area.

Algorithm. Pass 1 keeps instances in order of area (largest first) and drops each one
that is a duplicate of an instance already kept. Pass 2 takes the survivors in order of
(not a fragment, predicted IoU, area, lower tile index) and drops each one that
conflicts with an instance already kept. Each pass order agrees with its pairwise rule,
so every dropped instance lost its pair against a kept one, and no two kept instances
are duplicates or in conflict. A cut fragment never survives next to the whole object.
The whole object is larger, so pass 1 drops a fragment that lies inside it. A partial
overlap is a conflict that the non-fragment wins. Ties that remain after all keys are
broken by the polygon's WKB bytes, so the result does not depend on the input order.

Limitation: greedy, like NMS. An instance dropped in pass 1 by an instance that pass 2
later drops stays dropped, even if nothing kept overlaps it.

Cost: one ``shapely.STRtree`` query for all candidate pairs and vectorised intersection
areas, so the work grows with the number of overlapping pairs, not N². Measured on a
2-core CPU: about 4 s for 103,000 instances (``test_100k_instances_merge_fast``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import shapely

from ml.instances import Instance

logger = logging.getLogger(__name__)

DUPLICATE_OVERLAP = 0.9
CONFLICT_OVERLAP = 0.1


@dataclass(frozen=True)
class MergeResult:
    """Outcome of merge_instances.

    Attributes:
        kept: Surviving instances, in pass-2 priority order.
        dropped_duplicate: Instances dropped as a duplicate of a larger one (rule 1).
        dropped_conflict: Instances dropped in a partial-overlap conflict (rule 2).
    """

    kept: tuple[Instance, ...]
    dropped_duplicate: tuple[Instance, ...]
    dropped_conflict: tuple[Instance, ...]


def merge_instances(instances: list[Instance] | tuple[Instance, ...]) -> MergeResult:
    """Merge instances from overlapping tiles by the duplicate and conflict rules above.

    Args:
        instances: Instances in level-0 pixels from any number of tiles, in any order.

    Returns:
        Kept and dropped instances. Every input lands in exactly one of the three lists.
    """
    count = len(instances)
    if count == 0:
        return MergeResult((), (), ())

    polygons = np.array([instance.polygon_level0 for instance in instances], dtype=object)
    areas = shapely.area(polygons)
    tile_indexes = np.array([instance.tile_index for instance in instances])
    first, second, overlap = _overlapping_pairs(polygons, areas, tile_indexes)

    # The WKB of the normalised polygon is the last tie-breaker, so that equal scores in any
    # input order give the same result.
    wkb_keys = shapely.to_wkb(shapely.normalize(polygons))
    area_order = sorted(
        range(count),
        key=lambda i: (-areas[i], -instances[i].predicted_iou, tile_indexes[i], wkb_keys[i]),
    )
    duplicate = overlap >= DUPLICATE_OVERLAP
    # Limitation: an instance dropped here stays dropped even if pass 2 drops its keeper.
    kept_after_duplicates = _greedy_keep(area_order, first[duplicate], second[duplicate], count)

    conflict_order = sorted(
        (i for i in range(count) if kept_after_duplicates[i]),
        key=lambda i: (
            instances[i].touches_interior_edge,
            -instances[i].predicted_iou,
            -areas[i],
            tile_indexes[i],
            wkb_keys[i],
        ),
    )
    conflict = overlap > CONFLICT_OVERLAP
    kept = _greedy_keep(conflict_order, first[conflict], second[conflict], count)

    result = MergeResult(
        kept=tuple(instances[i] for i in conflict_order if kept[i]),
        dropped_duplicate=tuple(
            instances[i] for i in area_order if not kept_after_duplicates[i]
        ),
        dropped_conflict=tuple(
            instances[i] for i in conflict_order if not kept[i]
        ),
    )
    logger.debug(
        "Merged %d instances: %d kept, %d duplicates, %d conflicts, %d overlapping pairs",
        count, len(result.kept), len(result.dropped_duplicate), len(result.dropped_conflict),
        len(first),
    )
    return result


def _overlapping_pairs(
    polygons: np.ndarray, areas: np.ndarray, tile_indexes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return index pairs (i < j) from different tiles that intersect, with their overlap.

    Overlap is the intersection area over the smaller area, in 0..1.
    """
    tree = shapely.STRtree(polygons)
    first, second = tree.query(polygons, predicate="intersects")
    candidate = (first < second) & (tile_indexes[first] != tile_indexes[second])
    first, second = first[candidate], second[candidate]
    smaller_areas = np.minimum(areas[first], areas[second])

    # The bounding-box intersection bounds the polygon intersection from above, so pairs
    # whose boxes share too little area (touching neighbours) skip the exact intersection.
    bounds = shapely.bounds(polygons)
    box_overlap_w = np.minimum(bounds[first, 2], bounds[second, 2]) - np.maximum(
        bounds[first, 0], bounds[second, 0]
    )
    box_overlap_h = np.minimum(bounds[first, 3], bounds[second, 3]) - np.maximum(
        bounds[first, 1], bounds[second, 1]
    )
    possible = box_overlap_w * box_overlap_h > CONFLICT_OVERLAP * smaller_areas
    first, second, smaller_areas = first[possible], second[possible], smaller_areas[possible]

    intersection_areas = shapely.area(shapely.intersection(polygons[first], polygons[second]))
    return first, second, intersection_areas / smaller_areas


def _greedy_keep(
    order: list[int], first: np.ndarray, second: np.ndarray, count: int
) -> np.ndarray:
    """Return a keep mask: instances in ``order`` are kept unless paired with a kept one.

    Instances that are not in ``order`` stay dropped, so they never block another.
    """
    neighbours: list[list[int]] = [[] for _ in range(count)]
    for i, j in zip(first.tolist(), second.tolist()):
        neighbours[i].append(j)
        neighbours[j].append(i)

    kept = np.zeros(count, dtype=bool)
    for i in order:
        if not any(kept[j] for j in neighbours[i]):
            kept[i] = True
    return kept
