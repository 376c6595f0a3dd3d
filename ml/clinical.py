"""Clinical read-outs from level-0 polygons: IFTA %, glomerulosclerosis %, densities, Banff ci/ct.

All geometry is in level-0 pixels, and ``mpp`` (µm per level-0 pixel) converts it to µm.
Areas are returned in µm², percentages on a 0-100 scale.

IFTA (interstitial fibrosis and tubular atrophy) is measured as in Weijer et al.,
"Segment Anything Model for Instance Segmentation in Kidney Histopathology Images". Atrophic
tubules that lie close together form clusters, and each cluster gets a hull. The union of
the hulls inside the cortex, divided by the cortex area, is the IFTA %. The hull therefore
counts the interstitium between adjacent atrophic tubules as fibrosis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import MultiPoint, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from ml.errors import NephrowebError
from ml.polygons import make_valid_polygons

logger = logging.getLogger(__name__)

# Product conventions, not published rules. 50 µm is about one tubule diameter, so two
# atrophic tubules with at most one tubule's width of interstitium between them count as
# adjacent. Three tubules is the smallest group whose hull is a patch rather than a strip
# between two tubules.
DEFAULT_CLUSTER_DISTANCE_UM = 50.0
DEFAULT_MIN_TUBULES = 3
# Product convention for shapely.concave_hull (0 = most concave, 1 = convex hull), chosen
# on synthetic grids: 0.3 fills the gaps of a regular grid of tubules completely and leaves
# the inside corner of an L-shaped cluster out.
DEFAULT_CONCAVE_RATIO = 0.3
# Each tubule outline gets at least this many hull input points, so small tubules keep
# their shape when the cluster distance is large compared with them.
MIN_OUTLINE_POINTS = 8

# Banff upper bounds (inclusive) of grades 0, 1 and 2 for interstitial fibrosis (ci), as
# a percentage of cortical area. Anything above the last bound is grade 3.
BANFF_UPPER_BOUNDS_PCT = (5.0, 25.0, 50.0)
BANFF_PROXY_NOTE = (
    "ci and ct are both graded from the IFTA %, the area of hulls around clusters of "
    "atrophic tubules. Banff scores fibrosis (ci) and atrophy (ct) separately, and the two "
    "can differ, so both grades are approximations."
)

HullKind = Literal["concave", "convex"]


class ClinicalInputError(NephrowebError, ValueError):
    """Geometry or counts that a clinical read-out cannot use."""


@dataclass(frozen=True)
class IftaSettings:
    """Clustering and hull settings of :func:`ifta`, validated on construction.

    Attributes:
        cluster_distance_um: Two atrophic tubules whose outlines are at most this far
            apart (inclusive) belong to the same cluster. Must be > 0.
        min_tubules: Clusters with fewer tubules get no hull and add nothing to IFTA.
        hull: "concave" or "convex", see :func:`ifta`.
        concave_ratio: ``ratio`` passed to ``shapely.concave_hull``, in [0, 1].
            Ignored for convex hulls.
    """

    cluster_distance_um: float = DEFAULT_CLUSTER_DISTANCE_UM
    min_tubules: int = DEFAULT_MIN_TUBULES
    hull: HullKind = "concave"
    concave_ratio: float = DEFAULT_CONCAVE_RATIO

    def __post_init__(self) -> None:
        if not _is_real(self.cluster_distance_um) or not self.cluster_distance_um > 0:
            raise ClinicalInputError(
                f"cluster_distance_um must be a finite number of µm above 0, got "
                f"{self.cluster_distance_um!r}. Use e.g. {DEFAULT_CLUSTER_DISTANCE_UM}."
            )
        if not _is_count(self.min_tubules) or self.min_tubules < 1:
            raise ClinicalInputError(
                f"min_tubules must be an integer of at least 1, got {self.min_tubules!r}. "
                f"Use e.g. {DEFAULT_MIN_TUBULES}."
            )
        if self.hull not in ("concave", "convex"):
            raise ClinicalInputError(
                f"hull must be 'concave' or 'convex', got {self.hull!r}."
            )
        if not _is_real(self.concave_ratio) or not 0.0 <= self.concave_ratio <= 1.0:
            raise ClinicalInputError(
                f"concave_ratio must be a number from 0 to 1, got {self.concave_ratio!r}. "
                f"Use e.g. {DEFAULT_CONCAVE_RATIO}."
            )


@dataclass(frozen=True)
class IftaCluster:
    """One cluster of adjacent atrophic tubules that received a hull.

    Attributes:
        n_tubules: Atrophic tubules in the cluster.
        area_um2: Area of the cluster's hull inside the cortex. Hulls of different
            clusters can overlap, so these areas may add up to more than the IFTA area.
    """

    n_tubules: int
    area_um2: float


@dataclass(frozen=True, eq=False)
class IftaResult:
    """IFTA read-out of one section.

    Attributes:
        regions_level0: Union of the cluster hulls inside the cortex, in level-0 pixels.
            Empty when no cluster is large enough.
        ifta_pct: ``ifta_area_um2 / cortex_area_um2 * 100``, from 0 to 100.
        cortex_area_um2: Area of the cortex, the denominator.
        ifta_area_um2: Area of ``regions_level0``.
        clusters: Clusters with a hull, largest area first.
        n_atrophic_tubules: Atrophic tubules used (empty input geometries are not counted).
        n_tubules_outside_clusters: Atrophic tubules in clusters below ``min_tubules``.
        settings: The clustering and hull settings used.
    """

    regions_level0: MultiPolygon
    ifta_pct: float
    cortex_area_um2: float
    ifta_area_um2: float
    clusters: tuple[IftaCluster, ...]
    n_atrophic_tubules: int
    n_tubules_outside_clusters: int
    settings: IftaSettings


@dataclass(frozen=True)
class GlomerulosclerosisResult:
    """Share of globally sclerotic glomeruli among all glomeruli.

    Attributes:
        pct: ``n_sclerotic / n_glomeruli * 100``, or None when there are no glomeruli.
        n_glomeruli: All glomeruli, non-sclerotic and sclerotic.
        n_sclerotic: Sclerotic glomeruli.
        reason: Why ``pct`` is None, else None.
    """

    pct: float | None
    n_glomeruli: int
    n_sclerotic: int
    reason: str | None = None


@dataclass(frozen=True)
class BanffCiCt:
    """Banff ci and ct grades derived from one IFTA %.

    Attributes:
        ci: Interstitial fibrosis grade, 0 to 3.
        ct: Tubular atrophy grade, 0 to 3, on the same bounds as ``ci``.
        ifta_pct: The percentage both grades come from.
        limitation: A sentence for the user on what the proxy grades miss.
    """

    ci: int
    ct: int
    ifta_pct: float
    limitation: str = BANFF_PROXY_NOTE


def ifta(
    atrophic_tubules: Iterable[BaseGeometry],
    cortex: BaseGeometry,
    mpp: float,
    cluster_distance_um: float = DEFAULT_CLUSTER_DISTANCE_UM,
    min_tubules: int = DEFAULT_MIN_TUBULES,
    hull: HullKind = "concave",
    concave_ratio: float = DEFAULT_CONCAVE_RATIO,
) -> IftaResult:
    """Measure IFTA % as hulls around clusters of adjacent atrophic tubules, inside cortex.

    Steps:
        1. Link every two tubules whose outlines are at most ``cluster_distance_um``
           apart. Clusters are the connected groups (single linkage). An STRtree query
           finds the close pairs, so the cost grows with the number of close pairs
           rather than with the square of the tubule count.
        2. Give each cluster with at least ``min_tubules`` tubules a hull, unioned with
           its tubules so that the region always covers them.
        3. Clip the hulls to the cortex, and divide the area of their union by the cortex
           area.

    Hulls:
        "concave" (default): ``shapely.concave_hull`` with ``concave_ratio`` over points
        placed along each tubule outline every ``cluster_distance_um`` (at least
        ``MIN_OUTLINE_POINTS`` per tubule). The hull follows a curved or L-shaped cluster
        instead of covering the tissue inside its bend, as a convex hull would. The points
        are resampled because ``shapely.concave_hull`` uses only vertices, and on densely
        traced outlines it cuts into the interstitium between tubules. For a 2 x 3 grid of
        20 px squares 10 px apart, with a vertex every 2 px, it covered 100 of the
        1600 px² between them (shapely 2.1.2, GEOS 3.13.1, ratios 0.05 to 0.3).
        "convex": ``convex_hull`` of the cluster. It is simpler and independent of
        vertex density, but overestimates IFTA for bent clusters.

    Args:
        atrophic_tubules: Outlines of atrophic tubules in level-0 pixels, one Polygon or
            MultiPolygon per tubule. Invalid outlines are repaired and empty ones skipped.
        cortex: The cortex in level-0 pixels (Polygon or MultiPolygon, holes allowed).
        mpp: µm per level-0 pixel of the slide.
        cluster_distance_um: Maximum distance between the outlines of adjacent tubules.
        min_tubules: Smallest cluster that gets a hull.
        hull: "concave" or "convex".
        concave_ratio: ``shapely.concave_hull`` ratio in [0, 1], 1 gives the convex hull.

    Returns:
        The IFTA regions, percentage, areas and per-cluster summaries. No atrophic tubules
        give 0 %.

    Raises:
        ClinicalInputError: ``mpp`` or a setting is invalid, the cortex has no area, or a
            tubule is not a polygon.
    """
    settings = IftaSettings(cluster_distance_um, min_tubules, hull, concave_ratio)
    if not _is_real(mpp) or not mpp > 0:
        raise ClinicalInputError(
            f"mpp must be the slide's µm per level-0 pixel, a finite number above 0, got "
            f"{mpp!r}. Read it from the slide or enter it when importing the slide."
        )
    cortex_level0 = _cortex_polygons(cortex)
    tubules_level0 = _tubule_geometries(atrophic_tubules)

    pixel_area_um2 = mpp * mpp
    cortex_area_um2 = cortex_level0.area * pixel_area_um2
    distance_px = settings.cluster_distance_um / mpp
    logger.debug(
        "IFTA: %d atrophic tubules, cortex %.0f µm², cluster distance %.1f µm = %.2f px "
        "at %.4f µm/px", len(tubules_level0), cortex_area_um2, settings.cluster_distance_um,
        distance_px, mpp,
    )

    cluster_labels = _cluster_labels(tubules_level0, distance_px)
    shapely.prepare(cortex_level0)
    clusters: list[IftaCluster] = []
    regions: list[BaseGeometry] = []
    n_outside = 0
    for label in np.unique(cluster_labels):
        members = [tubules_level0[i] for i in np.flatnonzero(cluster_labels == label)]
        if len(members) < settings.min_tubules:
            n_outside += len(members)
            continue
        hull_level0 = _cluster_hull(members, settings, distance_px)
        region_level0 = MultiPolygon(make_valid_polygons(hull_level0.intersection(cortex_level0)))
        clusters.append(IftaCluster(len(members), region_level0.area * pixel_area_um2))
        regions.append(region_level0)

    regions_level0 = _as_multipolygon(shapely.union_all(regions)) if regions else MultiPolygon()
    ifta_area_um2 = regions_level0.area * pixel_area_um2
    # The union is inside the cortex, so only floating-point error can push it above 100 %.
    ifta_pct = min(100.0, ifta_area_um2 / cortex_area_um2 * 100.0)
    return IftaResult(
        regions_level0=regions_level0,
        ifta_pct=ifta_pct,
        cortex_area_um2=cortex_area_um2,
        ifta_area_um2=ifta_area_um2,
        clusters=tuple(sorted(clusters, key=lambda cluster: -cluster.area_um2)),
        n_atrophic_tubules=len(tubules_level0),
        n_tubules_outside_clusters=n_outside,
        settings=settings,
    )


def glomerulosclerosis(glomeruli_count: int, sclerotic_count: int) -> GlomerulosclerosisResult:
    """Compute the percentage of sclerotic glomeruli among all glomeruli.

    The denominator includes the sclerotic glomeruli:
    ``pct = sclerotic_count / (glomeruli_count + sclerotic_count) * 100``.

    Args:
        glomeruli_count: Non-sclerotic glomeruli (class "glomerulus"). Sclerotic glomeruli
            must not be included here, because they are added to the denominator.
        sclerotic_count: Sclerotic glomeruli (class "sclerotic glomerulus").

    Returns:
        The percentage and counts. With no glomeruli at all, ``pct`` is None and
        ``reason`` gives the cause.

    Raises:
        ClinicalInputError: A count is not a non-negative integer.
    """
    for name, count in (("glomeruli_count", glomeruli_count), ("sclerotic_count", sclerotic_count)):
        if not _is_count(count) or count < 0:
            raise ClinicalInputError(
                f"{name} must be a non-negative integer, got {count!r}. Pass the number of "
                f"objects of that class in the section."
            )

    n_glomeruli = int(glomeruli_count) + int(sclerotic_count)
    if n_glomeruli == 0:
        return GlomerulosclerosisResult(
            pct=None, n_glomeruli=0, n_sclerotic=0,
            reason="no glomeruli in the section: glomerulosclerosis % is undefined",
        )
    return GlomerulosclerosisResult(
        pct=int(sclerotic_count) / n_glomeruli * 100.0,
        n_glomeruli=n_glomeruli,
        n_sclerotic=int(sclerotic_count),
    )


def densities_per_mm2(counts_by_class: Mapping[str, int], area_um2: float) -> dict[str, float]:
    """Convert object counts per class to objects per mm² of ``area_um2`` (1 mm² = 1e6 µm²).

    Raises:
        ClinicalInputError: ``area_um2`` is not above 0, or a count is not a non-negative
            integer.
    """
    if not _is_real(area_um2) or not area_um2 > 0:
        raise ClinicalInputError(
            f"area_um2 must be a finite area in µm² above 0, got {area_um2!r}. Pass the "
            f"area the objects were counted in, e.g. the cortex or tissue area."
        )
    area_mm2 = area_um2 / 1e6
    densities = {}
    for class_name, count in counts_by_class.items():
        if not _is_count(count) or count < 0:
            raise ClinicalInputError(
                f"Count of class {class_name!r} must be a non-negative integer, got {count!r}."
            )
        densities[class_name] = int(count) / area_mm2
    return densities


def banff_grade(pct: float) -> int:
    """Map a percentage of cortical area to a Banff ci-style grade from 0 to 3.

    Grade 0 is pct <= 5, grade 1 is 5 < pct <= 25, grade 2 is 25 < pct <= 50 and grade 3
    is pct > 50. Banff writes the ci bounds as 0-5 %, 6-25 %, 26-50 % and > 50 % of
    cortical area, for a pathologist's whole-number estimate. The measured value is not
    rounded first, so every value above 5, such as 5.5, is grade 1. The same applies at 25
    and 50.

    Raises:
        ClinicalInputError: ``pct`` is not a finite number from 0 to 100.
    """
    if not _is_real(pct) or not 0.0 <= pct <= 100.0:
        raise ClinicalInputError(
            f"Percentage for a Banff grade must be a finite number from 0 to 100, got "
            f"{pct!r}. Pass a percentage of cortical area, not a fraction."
        )
    for grade, upper_bound_pct in enumerate(BANFF_UPPER_BOUNDS_PCT):
        if pct <= upper_bound_pct:
            return grade
    return len(BANFF_UPPER_BOUNDS_PCT)


def banff_ci_ct(ifta_pct: float) -> BanffCiCt:
    """Grade Banff ci and ct from one IFTA %, both on the ci bounds of :func:`banff_grade`.

    NOTE: this is a proxy, and ``BanffCiCt.limitation`` states it for the user. Banff scores
    both ci and ct on the percentage of cortex involved, but from different lesions
    (banfffoundation.org, Banff 2019 figure 9), while one IFTA % stands for both here, so
    the two grades are always equal.
    """
    grade = banff_grade(ifta_pct)
    return BanffCiCt(ci=grade, ct=grade, ifta_pct=float(ifta_pct))


def _cortex_polygons(cortex: BaseGeometry) -> MultiPolygon:
    if not isinstance(cortex, BaseGeometry):
        raise ClinicalInputError(
            f"cortex must be a shapely Polygon or MultiPolygon in level-0 pixels, got "
            f"{type(cortex).__name__}."
        )
    cortex_level0 = MultiPolygon(make_valid_polygons(cortex))
    if cortex_level0.is_empty or cortex_level0.area <= 0:
        raise ClinicalInputError(
            "cortex has no area, so IFTA % (IFTA area over cortex area) is undefined. "
            "Annotate or detect the cortex of this section before measuring IFTA."
        )
    return cortex_level0


def _tubule_geometries(atrophic_tubules: Iterable[BaseGeometry]) -> list[BaseGeometry]:
    tubules_level0 = []
    n_empty = 0
    for index, tubule in enumerate(atrophic_tubules):
        if not isinstance(tubule, (Polygon, MultiPolygon)):
            raise ClinicalInputError(
                f"atrophic_tubules[{index}] must be a Polygon or MultiPolygon in level-0 "
                f"pixels, got {type(tubule).__name__}. Pass tubule outlines, not centroids."
            )
        parts = make_valid_polygons(tubule)
        if not parts:
            n_empty += 1
            continue
        tubules_level0.append(parts[0] if len(parts) == 1 else MultiPolygon(parts))
    if n_empty:
        logger.warning("IFTA: skipped %d atrophic tubules with no area.", n_empty)
    return tubules_level0


def _cluster_labels(tubules_level0: list[BaseGeometry], distance_px: float) -> np.ndarray:
    """Label tubules by single-linkage cluster: outlines within ``distance_px`` are linked."""
    n_tubules = len(tubules_level0)
    if n_tubules == 0:
        return np.zeros(0, dtype=np.int64)
    tree = shapely.STRtree(tubules_level0)
    # "dwithin" compares the exact outline distance (inclusive), which buffered outlines
    # would only approximate with their polygonal arcs.
    first, second = tree.query(tubules_level0, predicate="dwithin", distance=distance_px)
    links = coo_matrix((np.ones(first.size, dtype=np.int8), (first, second)),
                       shape=(n_tubules, n_tubules))
    _, labels = connected_components(links, directed=False)
    return labels


def _cluster_hull(
    members: list[BaseGeometry], settings: IftaSettings, distance_px: float
) -> BaseGeometry:
    cluster = shapely.union_all(members)
    # Limitation: the hull covers whatever lies between the tubules, glomeruli included.
    if settings.hull == "convex":
        return cluster.convex_hull
    outline_points = MultiPoint(
        np.concatenate([_outline_points(polygon, distance_px) for polygon in _polygons(members)])
    )
    hull = shapely.concave_hull(outline_points, ratio=settings.concave_ratio)
    # A concave hull of outline points may cut across a tubule between two points.
    return shapely.union(hull, cluster)


def _outline_points(polygon: Polygon, spacing_px: float) -> np.ndarray:
    ring = polygon.exterior
    n_points = max(MIN_OUTLINE_POINTS, math.ceil(ring.length / spacing_px))
    distances = np.linspace(0.0, ring.length, n_points, endpoint=False)
    return shapely.get_coordinates(shapely.line_interpolate_point(ring, distances))


def _polygons(geometries: list[BaseGeometry]) -> list[Polygon]:
    return [polygon for geometry in geometries for polygon in make_valid_polygons(geometry)]


def _as_multipolygon(geometry: BaseGeometry) -> MultiPolygon:
    return MultiPolygon(make_valid_polygons(geometry))


def _is_real(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _is_count(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
