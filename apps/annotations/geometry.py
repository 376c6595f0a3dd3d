"""Conversions between ``ml`` instances (shapely, level-0) and stored rows."""

from shapely.geometry import mapping

from .models import Instance

COORDINATE_DECIMALS = 2


def _round_coords(geojson: dict) -> dict:
    def round_ring(ring):
        return [[round(x, COORDINATE_DECIMALS), round(y, COORDINATE_DECIMALS)] for x, y in ring]

    if geojson["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [round_ring(r) for r in geojson["coordinates"]]}
    return geojson


def instance_row(polygon_level0, *, slide, mpp: float, **fields) -> Instance:
    """Build an unsaved Instance from a shapely polygon in level-0 pixels."""
    x_min, y_min, x_max, y_max = polygon_level0.bounds
    return Instance(
        slide=slide,
        geometry=_round_coords(mapping(polygon_level0)),
        x_min_level0=x_min,
        y_min_level0=y_min,
        x_max_level0=x_max,
        y_max_level0=y_max,
        area_um2=polygon_level0.area * mpp * mpp,
        **fields,
    )
