"""GeoJSON export that QuPath imports: a FeatureCollection in level-0 pixel coordinates.

The instances become ``ml.annotation_files.AnnotationObject`` and are written by
``ml.qupath_geojson.write_qupath_geojson``, the same code path whose output the importer
reads back. Each feature carries QuPath's ``objectType``, a ``classification`` with name
and RGB colour when the instance has a class, ``measurements`` (area, SAM scores) and a
``nephroweb`` property with the instance id, source and review state. The output is
strict JSON (no NaN or Infinity).
"""

import io
import math
import uuid

from shapely.geometry import shape

from ml.annotation_files import AnnotationObject
from ml.qupath_geojson import write_qupath_geojson

from .classes import color_rgb

# The namespace makes feature ids stable across exports of the same instance.
_FEATURE_ID_NAMESPACE = uuid.UUID("6f0d5a4e-2a7b-4f5e-9c56-0b8c3c1f7a10")


def _finite(measurements: dict) -> dict:
    return {k: float(v) for k, v in measurements.items() if v is not None and math.isfinite(v)}


def instance_object(instance, index: int) -> AnnotationObject:
    measurements = {
        "Area µm^2": instance.area_um2,
        "SAM predicted IoU": instance.predicted_iou,
        "SAM stability score": instance.stability_score,
        "Class probability": instance.class_confidence,
    }
    return AnnotationObject(
        index=index,
        geometry_level0=shape(instance.geometry),
        class_name=instance.class_name or None,
        class_color_rgb=color_rgb(instance.class_name) if instance.class_name else None,
        object_type="annotation",
        measurements=_finite(measurements),
        properties={
            "id": str(uuid.uuid5(_FEATURE_ID_NAMESPACE, f"instance-{instance.pk}")),
            "isLocked": False,
            "nephroweb": {
                "instance_id": instance.pk,
                "source": instance.source,
                "review_state": instance.review_state,
                "proposal_run": instance.proposal_run_id,
                "version": instance.version,
            },
        },
    )


def export_feature_collection(instances) -> str:
    stream = io.StringIO()
    write_qupath_geojson((instance_object(i, n) for n, i in enumerate(instances)), stream)
    return stream.getvalue()
