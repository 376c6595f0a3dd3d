"""The instance: one proposed object as a level-0 polygon with SAM's quality scores."""

from __future__ import annotations

from dataclasses import dataclass

from shapely.geometry import Polygon


@dataclass(frozen=True)
class Instance:
    """One object proposed by SAM on one tile.

    Attributes:
        polygon_level0: Outline in level-0 pixels, as a valid, non-empty Polygon with
            its holes kept.
        predicted_iou: SAM's own estimate of the mask's IoU with the true object.
        stability_score: IoU of the mask thresholded at two logit offsets (SAM's measure
            of how sharp the mask boundary is).
        tile_index: Index of the tile that produced the mask.
        touches_interior_edge: The mask reaches a tile edge shared with a neighbouring
            tile, so it may be a fragment of an object cut by that edge.
    """

    polygon_level0: Polygon
    predicted_iou: float
    stability_score: float
    tile_index: int
    touches_interior_edge: bool

    def __post_init__(self) -> None:
        polygon = self.polygon_level0
        if not isinstance(polygon, Polygon) or polygon.is_empty or not polygon.is_valid:
            raise ValueError(
                f"Instance from tile {self.tile_index} needs a valid, non-empty shapely Polygon "
                f"in level-0 pixels, got {type(polygon).__name__} "
                f"(empty={getattr(polygon, 'is_empty', None)}). "
                "Repair it with ml.polygons.make_valid_polygons first."
            )

    @property
    def area_level0(self) -> float:
        """Polygon area in square level-0 pixels."""
        return float(self.polygon_level0.area)

    @property
    def bbox_level0_xyxy(self) -> tuple[float, float, float, float]:
        """Bounding box (x_min, y_min, x_max, y_max) in level-0 pixels."""
        x_min, y_min, x_max, y_max = self.polygon_level0.bounds
        return (x_min, y_min, x_max, y_max)
