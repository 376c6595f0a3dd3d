"""Conversions between shapely geometry in level-0 pixels and stored Instance rows."""

from shapely.geometry import mapping

from .models import Instance

COORDINATE_DECIMALS = 2


def _round_ring(ring):
    return [[round(x, COORDINATE_DECIMALS), round(y, COORDINATE_DECIMALS)] for x, y, *_ in ring]


def _rounded_geojson(geometry) -> dict:
    geojson = mapping(geometry)
    if geojson["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [_round_ring(r) for r in geojson["coordinates"]]}
    if geojson["type"] == "MultiPolygon":
        return {
            "type": "MultiPolygon",
            "coordinates": [[_round_ring(r) for r in polygon] for polygon in geojson["coordinates"]],
        }
    raise ValueError(f"Expected a Polygon or MultiPolygon, got {geojson['type']}.")


def geometry_row_fields(geometry, mpp: float) -> dict:
    """Return the Instance fields derived from a level-0 geometry: GeoJSON, bbox, area."""
    x_min, y_min, x_max, y_max = geometry.bounds
    return {
        "geometry": _rounded_geojson(geometry),
        "x_min_level0": x_min,
        "y_min_level0": y_min,
        "x_max_level0": x_max,
        "y_max_level0": y_max,
        "area_um2": geometry.area * mpp * mpp,
    }


def instance_row(geometry_level0, *, slide, mpp: float, **fields) -> Instance:
    """Build an unsaved Instance from a shapely (Multi)Polygon in level-0 pixels."""
    return Instance(slide=slide, **geometry_row_fields(geometry_level0, mpp), **fields)
