"""GeoJSON annotations as QuPath and other tools export them, read and written.

Reading accepts every dialect QuPath has written since 0.2: a FeatureCollection, a bare
JSON array of Features, a single Feature, or a bare Polygon or MultiPolygon geometry. The
object type comes from ``properties.objectType`` (QuPath 0.3 and later) or from the
legacy ``id`` ("PathAnnotationObject", ...). Coordinates are level-0 pixels, as QuPath
writes them. Writing produces the FeatureCollection that QuPath 0.4 and later imports.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import shapely
from shapely.geometry import MultiPolygon, Polygon

from ml.annotation_files import (
    SUPPORTED_FORMATS_TEXT,
    AnnotationFile,
    AnnotationFileError,
    AnnotationObject,
    GeometryRejected,
    ObjectCollector,
    Ring,
    coordinate_value,
    is_rgb_triple,
)

logger = logging.getLogger(__name__)

# QuPath 0.2 stored the object type in the feature "id"; 0.3 moved it to objectType.
LEGACY_OBJECT_TYPES = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
    "PathRootObject": "root",
}

# Properties that become AnnotationObject fields and are not kept in ``properties``.
_FIELD_PROPERTIES = ("objectType", "classification", "measurements")


def read_geojson_bytes(content: bytes, path: Path) -> AnnotationFile:
    """Parse GeoJSON content and import its polygonal features.

    Class rule: the QuPath ``classification`` comes first, as an object with ``name``
    or ``names`` or as a plain string. Without one, the class is a string ``label``
    (or DSA's ``{"value": ...}``), then a string ``group``. Last comes ``name``, but only
    for features without a QuPath object type, because QuPath's ``name`` is an object's
    own name, not its class. Without any of these the object is unclassified.

    Raises:
        AnnotationFileError: The content is not valid UTF-8 JSON, or JSON of a shape that is
            not GeoJSON.
    """
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationFileError(
            f"Annotation file {path} is not UTF-8 text (invalid byte at position "
            f"{exc.start}). Export it again as UTF-8 GeoJSON."
        ) from exc
    try:
        # Python's json also accepts the bare tokens NaN and Infinity, which some
        # exporters write for missing measurements.
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(
            f"Annotation file {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
            f"column {exc.colno} (character {exc.pos}). The file may be truncated, so "
            "export it again."
        ) from exc
    except (ValueError, RecursionError) as exc:
        # For example an integer of more than 4300 digits, or nesting deeper than the
        # interpreter's recursion limit.
        raise AnnotationFileError(
            f"Annotation file {path} cannot be parsed as JSON ({exc}). Export it again."
        ) from exc

    collector = ObjectCollector()
    for index, feature in enumerate(_features(document, path)):
        _read_feature(index, feature, collector)
    return collector.finish(path, "geojson")


def _features(document: Any, path: Path) -> list[Any]:
    """Return the list of features of any supported GeoJSON dialect."""
    if isinstance(document, list):
        if document and not any(_is_feature(item) for item in document):
            raise AnnotationFileError(
                f"Annotation file {path} is a JSON array without GeoJSON Features"
                f"{_dsa_hint(document[0])}. Supported formats are {SUPPORTED_FORMATS_TEXT}."
            )
        return document
    if not isinstance(document, dict):
        raise AnnotationFileError(
            f"Annotation file {path} is JSON but contains a single value, not a GeoJSON "
            f"object or array. Supported formats are {SUPPORTED_FORMATS_TEXT}."
        )

    geojson_type = document.get("type")
    if geojson_type == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise AnnotationFileError(
                f"Annotation file {path} is a GeoJSON FeatureCollection whose \"features\" is "
                f"{type(features).__name__}, expected an array. Export the file again."
            )
        return features
    if geojson_type == "Feature":
        return [document]
    if isinstance(geojson_type, str) and geojson_type in _GEOMETRY_TYPES:
        return [{"type": "Feature", "geometry": document, "properties": {}}]
    raise AnnotationFileError(
        f"Annotation file {path} is JSON but not GeoJSON: its top-level object has "
        f"\"type\" {geojson_type!r}{_dsa_hint(document)}. Supported formats are "
        f"{SUPPORTED_FORMATS_TEXT}."
    )


_GEOMETRY_TYPES = {
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


def _is_feature(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "Feature"


def _dsa_hint(item: Any) -> str:
    """Name the Digital Slide Archive document format when an object looks like one."""
    if isinstance(item, dict) and ("annotation" in item or "elements" in item):
        return (
            " (it looks like a Digital Slide Archive annotation document, which is not "
            "supported: export the annotations from DSA as GeoJSON)"
        )
    return ""


def _read_feature(index: int, feature: Any, collector: ObjectCollector) -> None:
    """Import one feature, or record why it is skipped."""
    if not _is_feature(feature):
        collector.skip(index, f"not a GeoJSON Feature (found {_describe(feature)})")
        return
    properties = feature.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        collector.skip(index, f"\"properties\" is {_describe(properties)}, expected an object")
        return

    object_type, is_qupath_object = _object_type(feature, properties)
    try:
        class_name, class_color_rgb = _classification(properties.get("classification"))
    except GeometryRejected as rejected:
        collector.skip(index, rejected.reason)
        return
    if class_name is None:
        class_name = _fallback_class_name(properties, is_qupath_object)

    try:
        polygons = _geometry_polygons(feature.get("geometry"))
    except GeometryRejected as rejected:
        collector.skip(index, rejected.reason)
        return

    kept_properties = {
        key: value
        for key, value in properties.items()
        if key not in _FIELD_PROPERTIES
        and not (key == "id" and isinstance(value, str) and value in LEGACY_OBJECT_TYPES)
    }
    feature_id = feature.get("id")
    if isinstance(feature_id, str) and feature_id not in LEGACY_OBJECT_TYPES:
        kept_properties["id"] = feature_id

    collector.add(
        index,
        polygons,
        class_name=class_name,
        class_color_rgb=class_color_rgb,
        object_type=object_type,
        measurements=_measurements(properties.get("measurements")),
        properties=kept_properties,
    )


def _describe(value: Any) -> str:
    """Name a JSON value's type for messages, e.g. 'a string' or 'null'."""
    if value is None:
        return "null"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


def _object_type(feature: dict, properties: dict) -> tuple[str, bool]:
    """Return the object type and whether the feature carries a QuPath object type."""
    object_type = properties.get("objectType")
    if isinstance(object_type, str) and object_type:
        return object_type, True
    for legacy_id in (feature.get("id"), properties.get("id")):
        if isinstance(legacy_id, str) and legacy_id in LEGACY_OBJECT_TYPES:
            return LEGACY_OBJECT_TYPES[legacy_id], True
    # QuPath imports a feature without a type as an annotation.
    return "annotation", False


def _classification(value: Any) -> tuple[str | None, tuple[int, int, int] | None]:
    """Return the class name and colour of a QuPath classification.

    An invalid colour is dropped and the class kept. A classification that is neither an
    object nor a string rejects the whole object, so that its class is never silently
    lost.
    """
    if value is None:
        return None, None
    if isinstance(value, str):
        return (value or None), None
    if not isinstance(value, dict):
        raise GeometryRejected(
            f"\"classification\" is {_describe(value)}, expected an object with \"name\" or "
            "a string"
        )

    name = value.get("name")
    names = value.get("names")
    if not (isinstance(name, str) and name):
        # QuPath writes a derived class such as "Tumor: Positive" as a list of names.
        if isinstance(names, list) and names and all(isinstance(part, str) for part in names):
            name = ": ".join(names)
        else:
            raise GeometryRejected(
                "\"classification\" has no string \"name\", so the class cannot be read"
            )

    color = value.get("color")
    if is_rgb_triple(color):
        return name, tuple(color)
    packed = value.get("colorRGB")
    if isinstance(packed, int) and not isinstance(packed, bool):
        return name, unpack_qupath_rgb(packed)
    return name, None


def unpack_qupath_rgb(packed: int) -> tuple[int, int, int]:
    """Decode QuPath's ``colorRGB``, a Java int in ARGB order (negative when alpha >= 128).

    The alpha byte is ignored. For example -3670016 is 0xFFC80000, which is (200, 0, 0).
    """
    argb = packed & 0xFFFFFFFF
    return ((argb >> 16) & 0xFF, (argb >> 8) & 0xFF, argb & 0xFF)


def _fallback_class_name(properties: dict, is_qupath_object: bool) -> str | None:
    """Return the class from ``label``, ``group`` or ``name`` for non-QuPath GeoJSON."""
    label = properties.get("label")
    if isinstance(label, dict):
        label = label.get("value")
    candidates = [label, properties.get("group")]
    if not is_qupath_object:
        candidates.append(properties.get("name"))
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def _measurements(value: Any) -> dict[str, float]:
    """Return finite measurements from a dict or from QuPath 0.2's list of {name, value}.

    Missing values, written as null, as the strings "NaN" or "Infinity" or as bare NaN
    tokens, are dropped, as are entries of any other shape.
    """
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = [
            (entry.get("name"), entry.get("value")) for entry in value if isinstance(entry, dict)
        ]
    else:
        return {}

    measurements = {}
    for name, number in pairs:
        if not isinstance(name, str) or isinstance(number, bool):
            continue
        if not isinstance(number, (int, float)):
            continue
        try:
            number = float(number)
        except OverflowError:
            continue
        if math.isfinite(number):
            measurements[name] = number
    return measurements


def _geometry_polygons(geometry: Any) -> list[list[Ring]]:
    """Return the polygons of a GeoJSON geometry as lists of (x, y) rings.

    Raises:
        GeometryRejected: The geometry is missing, not polygonal, or has invalid
            coordinates.
    """
    if geometry is None:
        raise GeometryRejected("the feature has no geometry")
    if not isinstance(geometry, dict):
        raise GeometryRejected(f"\"geometry\" is {_describe(geometry)}, expected an object")
    geometry_type = geometry.get("type")
    if not isinstance(geometry_type, str):
        raise GeometryRejected(
            f"geometry \"type\" is {_describe(geometry_type)}, expected a string"
        )

    if geometry_type == "Polygon":
        return [_rings(geometry.get("coordinates"), "polygon 0")]
    if geometry_type == "MultiPolygon":
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list):
            raise GeometryRejected(
                f"MultiPolygon coordinates are {_describe(coordinates)}, expected an array"
            )
        return [
            _rings(polygon, f"polygon {polygon_index}")
            for polygon_index, polygon in enumerate(coordinates)
        ]
    if geometry_type == "GeometryCollection":
        members = geometry.get("geometries")
        polygonal = [
            member
            for member in (members if isinstance(members, list) else [])
            if isinstance(member, dict) and member.get("type") in ("Polygon", "MultiPolygon")
        ]
        if not polygonal:
            raise GeometryRejected("unsupported geometry: GeometryCollection without polygons")
        return [polygon for member in polygonal for polygon in _geometry_polygons(member)]
    if geometry_type in _GEOMETRY_TYPES:
        raise GeometryRejected(
            f"unsupported geometry type {geometry_type}: only Polygon and MultiPolygon "
            "have an area"
        )
    raise GeometryRejected(f"unknown geometry type {geometry_type!r}")


def _rings(coordinates: Any, where: str) -> list[Ring]:
    """Convert the coordinate arrays of one polygon to (x, y) rings.

    Positions may carry a z value, which is ignored.
    """
    if not isinstance(coordinates, list):
        raise GeometryRejected(
            f"coordinates of {where} are {_describe(coordinates)}, expected an array of rings"
        )
    rings = []
    for ring_index, ring in enumerate(coordinates):
        ring_where = f"ring {ring_index} of {where}"
        if not isinstance(ring, list):
            raise GeometryRejected(f"{ring_where} is {_describe(ring)}, expected an array")
        points = []
        for point_index, position in enumerate(ring):
            point_where = f"position {point_index} of {ring_where}"
            if not isinstance(position, list) or len(position) < 2:
                raise GeometryRejected(
                    f"{point_where} is {_describe(position)}, expected [x, y]"
                )
            points.append(
                (
                    coordinate_value(position[0], point_where),
                    coordinate_value(position[1], point_where),
                )
            )
        rings.append(points)
    return rings


def write_qupath_geojson(
    objects: Iterable[AnnotationObject], destination: str | Path | IO[str]
) -> int:
    """Write objects as a GeoJSON FeatureCollection that QuPath 0.4 and later imports.

    Each feature carries an ``id``, its geometry with holes and parts kept, and in
    ``properties`` the ``objectType``, the ``classification`` (only for classified
    objects, with ``color`` when known), the ``measurements`` and the object's other
    properties. The output is strict JSON: non-finite numbers inside other properties are
    written as null. Coordinates are written unchanged, in full float precision.

    Args:
        objects: Objects to write, in the order they are written.
        destination: File path, or a text stream opened for writing.

    Returns:
        The number of features written.
    """
    features = [_feature(obj) for obj in objects]
    collection = {"type": "FeatureCollection", "features": features}
    # json.dumps uses the C encoder, which json.dump to a stream does not (CPython 3.11).
    text = json.dumps(collection, allow_nan=False, ensure_ascii=False)
    if hasattr(destination, "write"):
        destination.write(text)
    else:
        Path(destination).write_text(text, encoding="utf-8")
    logger.info("Wrote %d features as QuPath GeoJSON to %s.", len(features), destination)
    return len(features)


def _feature(obj: AnnotationObject) -> dict[str, Any]:
    properties: dict[str, Any] = {"objectType": obj.object_type}
    if obj.class_name is not None:
        classification: dict[str, Any] = {"name": obj.class_name}
        if obj.class_color_rgb is not None:
            classification["color"] = list(obj.class_color_rgb)
        properties["classification"] = classification
    properties["measurements"] = {
        name: float(value) for name, value in obj.measurements.items() if math.isfinite(value)
    }
    for key, value in obj.properties.items():
        if key not in _FIELD_PROPERTIES and key != "id":
            properties[key] = _strict_json_value(value)

    return {
        "type": "Feature",
        "id": _feature_id(obj.properties.get("id")),
        "geometry": _geometry_json(obj.geometry_level0),
        "properties": properties,
    }


def _feature_id(feature_id: Any) -> str:
    """Return the given id when it is a UUID, else a new random UUID.

    NOTE: QuPath 0.4 reads the feature id as a UUID; ids of other forms (for example
    DSA's hexadecimal ids) are replaced, not kept, because it is unverified how QuPath
    treats them.
    """
    if isinstance(feature_id, str):
        try:
            return str(uuid.UUID(feature_id))
        except ValueError:
            pass
    return str(uuid.uuid4())


def _geometry_json(geometry: Polygon | MultiPolygon) -> dict[str, Any]:
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _polygon_coordinates(geometry)}
    return {
        "type": "MultiPolygon",
        "coordinates": [_polygon_coordinates(part) for part in geometry.geoms],
    }


def _polygon_coordinates(polygon: Polygon) -> list[list[list[float]]]:
    rings = [polygon.exterior, *polygon.interiors]
    return [shapely.get_coordinates(ring).tolist() for ring in rings]


def _strict_json_value(value: Any) -> Any:
    """Replace non-finite floats in a parsed JSON value with None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json_value(item) for item in value]
    return value

