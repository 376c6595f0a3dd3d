"""The viewport response: instances in a level-0 box as GeoJSON text.

Geometry leaves the database as JSON text and goes into the response unparsed, because
parsing and re-encoding it dominated the response time. With 5 000 polygons of 24
vertices per response, that path took about 0.5 s against about 0.1 s for the text
(the data of benchmarks/api_latency.py, one request at a time on 2 shared CPU cores).
"""

import json

from django.db.models import F, TextField
from django.db.models.functions import Cast

from . import services

FEATURE_FIELDS = (
    "class_name", "review_state", "source", "predicted_iou", "stability_score",
    "class_confidence", "area_um2", "version",
)
# Properties are strings, numbers and None, which the C encoder of ``json`` handles.
_PROPERTIES_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


# Limitation: outlines keep every vertex at any zoom; a 5 000-feature view is about 3.7 MB.
def viewport_feature_collection(slide, x_min, y_min, x_max, y_max, limit: int) -> str:
    """Return a FeatureCollection of at most ``limit`` instances overlapping the box.

    Features are sorted by id, and ``truncated`` is true when more than ``limit``
    instances overlap the box. Parsed, the text equals the FeatureCollection that the
    view built with DRF before: each feature has its GeoJSON geometry and the fields of
    ``FEATURE_FIELDS`` plus ``model_version_name`` as properties.
    """
    rows = list(
        services.instances_in_viewport(slide, x_min, y_min, x_max, y_max, limit + 1).values(
            "id", *FEATURE_FIELDS,
            geometry_json=Cast("geometry", TextField()),
            model_version_name=F("proposal_run__model_version__name"),
        )
    )
    truncated = len(rows) > limit
    rows.sort(key=lambda row: row["id"])
    features = []
    for row in rows[:limit]:
        feature_id = row.pop("id")
        geometry_json = row.pop("geometry_json")
        properties = _PROPERTIES_ENCODER.encode(row)
        features.append(
            f'{{"type":"Feature","id":{feature_id},"geometry":{geometry_json},'
            f'"properties":{properties}}}'
        )
    return (
        '{"type":"FeatureCollection","features":[' + ",".join(features)
        + '],"truncated":' + ("true" if truncated else "false") + "}"
    )
