"""GeoJSON export that QuPath imports: a FeatureCollection in level-0 pixel coordinates.

Each feature carries QuPath's ``objectType``, a ``classification`` with name and RGB
colour when the instance has a class, and ``measurements`` as a name -> number dict.
Output is strict JSON (no NaN or Infinity).
"""

import json
import math
import uuid

from .classes import color_rgb

# The namespace makes feature ids stable across exports of the same instance.
_FEATURE_ID_NAMESPACE = uuid.UUID("6f0d5a4e-2a7b-4f5e-9c56-0b8c3c1f7a10")



def _number(value):
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def instance_feature(instance) -> dict:
    measurements = {"Area µm^2": _number(instance.area_um2)}
    if instance.predicted_iou is not None:
        measurements["SAM predicted IoU"] = _number(instance.predicted_iou)
    if instance.stability_score is not None:
        measurements["SAM stability score"] = _number(instance.stability_score)
    properties = {
        "objectType": "annotation",
        "isLocked": False,
        "measurements": {k: v for k, v in measurements.items() if v is not None},
        "nephroweb": {
            "instance_id": instance.pk,
            "source": instance.source,
            "review_state": instance.review_state,
            "proposal_run": instance.proposal_run_id,
        },
    }
    if instance.class_name:
        properties["classification"] = {
            "name": instance.class_name,
            "color": list(color_rgb(instance.class_name)),
        }
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_FEATURE_ID_NAMESPACE, f"instance-{instance.pk}")),
        "geometry": instance.geometry,
        "properties": properties,
    }


def export_feature_collection(instances) -> str:
    collection = {
        "type": "FeatureCollection",
        "features": [instance_feature(i) for i in instances],
    }
    return json.dumps(collection, allow_nan=False, ensure_ascii=False)
