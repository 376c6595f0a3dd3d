"""Tests for ml.clinical on hand-built geometry whose areas are known exactly."""

from __future__ import annotations

import math

import pytest
import shapely
import shapely.affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from ml.clinical import (
    ClinicalInputError,
    banff_ci_ct,
    banff_grade,
    densities_per_mm2,
    glomerulosclerosis,
    ifta,
)
from ml.errors import NephrowebError

# Tubules are 20 x 20 px squares on a 30 px pitch, so neighbours are 10 px apart. At
# 2 µm/px that is 40 µm squares with 20 µm gaps, linked by a 25 µm cluster distance.
MPP = 2.0
SIDE_PX = 20
PITCH_PX = 30
DISTANCE_UM = 25.0
CORTEX_LEVEL0 = box(0, 0, 1000, 500)
CORTEX_AREA_PX = 1000 * 500


def square_grid(columns: int, rows: int, x0: float = 100, y0: float = 100) -> list[Polygon]:
    return [
        box(x0 + c * PITCH_PX, y0 + r * PITCH_PX, x0 + c * PITCH_PX + SIDE_PX,
            y0 + r * PITCH_PX + SIDE_PX)
        for c in range(columns) for r in range(rows)
    ]


def grid_hull_area_px(columns: int, rows: int) -> float:
    """Area of the bounding rectangle of a grid: (n - 1) pitches plus one side per axis."""
    return ((columns - 1) * PITCH_PX + SIDE_PX) * ((rows - 1) * PITCH_PX + SIDE_PX)


def l_shaped_cluster() -> list[Polygon]:
    """Five squares along the top and four more down the left side, an L of 9 tubules."""
    top = [box(c * PITCH_PX, 0, c * PITCH_PX + SIDE_PX, SIDE_PX) for c in range(5)]
    left = [box(0, r * PITCH_PX, SIDE_PX, r * PITCH_PX + SIDE_PX) for r in range(1, 5)]
    return [shapely.affinity.translate(t, 200, 100) for t in top + left]


@pytest.mark.parametrize("hull", ["convex", "concave"])
def test_ifta_grid_cluster_and_lone_tubule(hull: str) -> None:
    lone_tubule = box(800, 400, 820, 420)
    result = ifta(square_grid(3, 2) + [lone_tubule], CORTEX_LEVEL0, MPP,
                  cluster_distance_um=DISTANCE_UM, min_tubules=3, hull=hull)

    hull_area_px = 80 * 50
    assert grid_hull_area_px(3, 2) == hull_area_px
    assert result.cortex_area_um2 == pytest.approx(CORTEX_AREA_PX * MPP**2)
    assert result.ifta_area_um2 == pytest.approx(hull_area_px * MPP**2)
    assert result.ifta_pct == pytest.approx(hull_area_px / CORTEX_AREA_PX * 100)
    assert result.regions_level0.area == pytest.approx(hull_area_px)
    assert result.regions_level0.equals(box(100, 100, 180, 150))
    assert len(result.clusters) == 1
    assert result.clusters[0].n_tubules == 6
    assert result.clusters[0].area_um2 == pytest.approx(hull_area_px * MPP**2)
    assert result.n_atrophic_tubules == 7
    assert result.n_tubules_outside_clusters == 1
    assert not result.regions_level0.intersects(lone_tubule)


def test_ifta_larger_grid_fills_rectangle() -> None:
    tubules = square_grid(6, 5)
    for hull in ("convex", "concave"):
        result = ifta(tubules, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, hull=hull)
        assert result.regions_level0.area == pytest.approx(grid_hull_area_px(6, 5))
        assert result.clusters[0].n_tubules == 30


def test_ifta_clipped_to_cortex() -> None:
    # The 3 x 2 grid spans x 100..180 and y 100..150, and the cortex ends at x = 145.
    cortex_level0 = box(0, 0, 145, 1000)
    result = ifta(square_grid(3, 2), cortex_level0, MPP, cluster_distance_um=DISTANCE_UM,
                  hull="convex")

    clipped_area_px = (145 - 100) * (150 - 100)
    assert result.ifta_area_um2 == pytest.approx(clipped_area_px * MPP**2)
    assert result.ifta_pct == pytest.approx(clipped_area_px / (145 * 1000) * 100)
    assert result.regions_level0.bounds == pytest.approx((100, 100, 145, 150))


def test_ifta_cortex_hole_excluded() -> None:
    # A hole (e.g. a medullary ray left out of the cortex) over the grid's left column.
    hole = [(95, 95), (125, 95), (125, 155), (95, 155)]
    cortex_level0 = Polygon(CORTEX_LEVEL0.exterior.coords, [hole])
    result = ifta(square_grid(3, 2), cortex_level0, MPP, cluster_distance_um=DISTANCE_UM,
                  hull="convex")

    visible_area_px = (180 - 125) * 50
    assert result.cortex_area_um2 == pytest.approx((CORTEX_AREA_PX - 30 * 60) * MPP**2)
    assert result.ifta_area_um2 == pytest.approx(visible_area_px * MPP**2)


def test_ifta_two_clusters_add_up() -> None:
    tubules = square_grid(2, 2, x0=100, y0=100) + square_grid(3, 1, x0=500, y0=300)
    result = ifta(tubules, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, hull="convex")

    areas_px = [grid_hull_area_px(2, 2), grid_hull_area_px(3, 1)]
    assert areas_px == [50 * 50, 80 * 20]
    assert result.ifta_area_um2 == pytest.approx(sum(areas_px) * MPP**2)
    assert [cluster.n_tubules for cluster in result.clusters] == [4, 3]
    assert [cluster.area_um2 for cluster in result.clusters] == pytest.approx(
        [area * MPP**2 for area in areas_px]
    )
    assert len(result.regions_level0.geoms) == 2


def test_ifta_l_cluster_concave_follows_shape() -> None:
    tubules = l_shaped_cluster()
    tubule_area_px = 9 * SIDE_PX**2
    convex = ifta(tubules, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, hull="convex")
    concave = ifta(tubules, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, hull="concave")

    # The L spans x 200..340 and y 100..240. Its convex hull is that 140 x 140 square less
    # the right-angled triangle beyond the line from (340, 120) to (220, 240), legs 120.
    convex_area_px = 140 * 140 - 120 * 120 / 2
    assert convex.regions_level0.area == pytest.approx(convex_area_px)
    inside_bend = Point(250, 150)
    assert convex.regions_level0.contains(inside_bend)
    assert not concave.regions_level0.contains(inside_bend)
    assert tubule_area_px < concave.regions_level0.area < convex.regions_level0.area
    for tubule in tubules:
        assert concave.regions_level0.buffer(1e-6).contains(tubule)


def test_ifta_distance_is_inclusive() -> None:
    # Three squares in a row, 10 px = 10 µm apart at 1 µm/px.
    row = [box(100 + i * PITCH_PX, 100, 100 + i * PITCH_PX + SIDE_PX, 120) for i in range(3)]
    linked = ifta(row, CORTEX_LEVEL0, 1.0, cluster_distance_um=10.0, hull="convex")
    apart = ifta(row, CORTEX_LEVEL0, 1.0, cluster_distance_um=9.9, hull="convex")

    assert linked.ifta_area_um2 == pytest.approx(80 * 20)
    assert apart.ifta_pct == 0.0
    assert apart.n_tubules_outside_clusters == 3
    assert apart.clusters == ()


def test_ifta_single_linkage_chain() -> None:
    # a-b and b-c are 10 px apart, a-c 50 px apart: one cluster through b.
    row = [box(0, 0, 20, 20), box(30, 0, 50, 20), box(60, 0, 80, 20)]
    result = ifta([shapely.affinity.translate(t, 100, 100) for t in row], CORTEX_LEVEL0, 1.0,
                  cluster_distance_um=12.0, hull="convex")

    assert [cluster.n_tubules for cluster in result.clusters] == [3]


def test_ifta_min_tubules() -> None:
    pair = square_grid(2, 1)
    below = ifta(pair, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, min_tubules=3)
    at = ifta(pair, CORTEX_LEVEL0, MPP, cluster_distance_um=DISTANCE_UM, min_tubules=2,
              hull="convex")

    assert below.ifta_pct == 0.0
    assert below.n_tubules_outside_clusters == 2
    assert at.ifta_area_um2 == pytest.approx(50 * 20 * MPP**2)


def test_ifta_no_tubules_is_zero() -> None:
    result = ifta([], CORTEX_LEVEL0, MPP)

    assert result.ifta_pct == 0.0
    assert result.ifta_area_um2 == 0.0
    assert result.regions_level0.is_empty
    assert result.cortex_area_um2 == pytest.approx(CORTEX_AREA_PX * MPP**2)
    assert result.n_atrophic_tubules == 0


def test_ifta_empty_tubule_skipped() -> None:
    result = ifta(square_grid(3, 1) + [Polygon()], CORTEX_LEVEL0, MPP,
                  cluster_distance_um=DISTANCE_UM, hull="convex")

    assert result.n_atrophic_tubules == 3
    assert result.ifta_area_um2 == pytest.approx(80 * 20 * MPP**2)


def test_ifta_defaults_link_at_50_um() -> None:
    # Squares 25 px apart at 2 µm/px are 50 µm apart, the default cluster distance.
    row = [box(100 + i * 45, 100, 120 + i * 45, 120) for i in range(3)]
    result = ifta(row, CORTEX_LEVEL0, 2.0, hull="convex")

    assert result.settings.cluster_distance_um == 50.0
    assert result.settings.min_tubules == 3
    assert result.ifta_area_um2 == pytest.approx((2 * 45 + 20) * 20 * 2.0**2)


@pytest.mark.parametrize(
    "cortex", [Polygon(), MultiPolygon(), Polygon([(0, 0), (10, 0), (20, 0)]),
               LineString([(0, 0), (10, 10)])],
    ids=["empty", "empty-multi", "zero-area", "line"],
)
def test_ifta_cortex_without_area(cortex) -> None:
    with pytest.raises(ClinicalInputError, match="cortex has no area"):
        ifta(square_grid(3, 1), cortex, MPP)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": math.nan}, "mpp"),
        ({"cluster_distance_um": 0.0}, "cluster_distance_um"),
        ({"cluster_distance_um": -5.0}, "cluster_distance_um"),
        ({"min_tubules": 0}, "min_tubules"),
        ({"min_tubules": 2.5}, "min_tubules"),
        ({"hull": "round"}, "hull"),
        ({"concave_ratio": 1.5}, "concave_ratio"),
    ],
)
def test_ifta_invalid_settings(kwargs: dict, field: str) -> None:
    arguments = {"mpp": MPP} | kwargs
    with pytest.raises(ClinicalInputError, match=field) as error:
        ifta(square_grid(3, 1), CORTEX_LEVEL0, **arguments)
    assert isinstance(error.value, NephrowebError)


def test_ifta_non_polygon_tubule() -> None:
    with pytest.raises(ClinicalInputError, match=r"atrophic_tubules\[1\]"):
        ifta([box(0, 0, 1, 1), Point(5, 5)], CORTEX_LEVEL0, MPP)


@pytest.mark.parametrize(
    ("normal", "sclerotic", "pct", "total"),
    [(8, 2, 20.0, 10), (0, 3, 100.0, 3), (7, 0, 0.0, 7), (2, 1, 100 / 3, 3)],
)
def test_glomerulosclerosis_denominator_all_glomeruli(normal, sclerotic, pct, total) -> None:
    result = glomerulosclerosis(normal, sclerotic)

    assert result.pct == pytest.approx(pct)
    assert result.n_glomeruli == total
    assert result.n_sclerotic == sclerotic
    assert result.reason is None


def test_glomerulosclerosis_no_glomeruli() -> None:
    result = glomerulosclerosis(0, 0)

    assert result.pct is None
    assert result.n_glomeruli == 0
    assert "no glomeruli" in result.reason


@pytest.mark.parametrize("bad", [-1, 2.0, True, None])
def test_glomerulosclerosis_invalid_count(bad) -> None:
    with pytest.raises(ClinicalInputError, match="sclerotic_count"):
        glomerulosclerosis(5, bad)


def test_densities_per_mm2() -> None:
    densities = densities_per_mm2({"glomerulus": 5, "vessel": 0, "atrophic tubule": 12},
                                  2_500_000.0)

    assert densities == pytest.approx({"glomerulus": 2.0, "vessel": 0.0, "atrophic tubule": 4.8})


@pytest.mark.parametrize("area_um2", [0.0, -1.0, math.inf])
def test_densities_invalid_area(area_um2: float) -> None:
    with pytest.raises(ClinicalInputError, match="area_um2"):
        densities_per_mm2({"glomerulus": 1}, area_um2)


def test_densities_invalid_count() -> None:
    with pytest.raises(ClinicalInputError, match="'vessel'"):
        densities_per_mm2({"vessel": -2}, 1e6)


@pytest.mark.parametrize(
    ("pct", "grade"),
    [(0.0, 0), (5.0, 0), (5.5, 1), (6.0, 1), (25.0, 1), (25.5, 2), (26.0, 2), (50.0, 2),
     (50.5, 3), (51.0, 3), (100.0, 3)],
)
def test_banff_grade_boundaries(pct: float, grade: int) -> None:
    assert banff_grade(pct) == grade


@pytest.mark.parametrize("pct", [-0.1, 100.1, math.nan, 0.3j])
def test_banff_grade_invalid(pct) -> None:
    with pytest.raises(ClinicalInputError, match="0 to 100"):
        banff_grade(pct)


def test_banff_ci_ct_proxy() -> None:
    grades = banff_ci_ct(30.0)

    assert grades.ci == 2
    assert grades.ct == 2
    assert grades.ifta_pct == 30.0
    assert "approximation" in grades.limitation


def test_hull_covers_glomerulus_between_tubules() -> None:
    # Four 20 px atrophic tubules sit at the corners of a 100 px square. The 40 px
    # glomerulus in its middle is not atrophic, but the hull covers it.
    tubules = [box(x, y, x + 20, y + 20) for x in (0, 80) for y in (0, 80)]
    glomerulus = box(30, 30, 70, 70)
    cortex = box(-1000, -1000, 1000, 1000)

    result = ifta(tubules, cortex, mpp=1.0, cluster_distance_um=60, hull="convex")

    assert result.ifta_area_um2 == pytest.approx(100 * 100)
    assert result.regions_level0.contains(glomerulus)
