"""Bad annotation files in QuPath's GeoJSON, written at test time into a folder the caller gives.

Features copy the layout of a real QuPath 0.4 export (``objectType``, ``classification``
with a ``color`` list, ``measurements`` as a dict, a UUID ``id``), taken from the first
feature of ``REAL_QUPATH_EXPORT``. Only the object type, geometry and class change.
Coordinates are level-0 pixels on a slide of ``SLIDE_SIZE_PX``.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

REAL_QUPATH_EXPORT = (
    Path("annotations") / "qupath_geojson" / "luna_test_cell_detections_SEMISYNTHETIC.geojson"
)
REAL_DSA_DOCUMENTS = (
    Path("annotations") / "dsa_json" / "histomicstk_TCGA-A2-A0YE-01Z-00-DX1_annotations.json"
)
# The slide record the tests import onto: width, height in level-0 px.
SLIDE_SIZE_PX = (4000, 3000)

GOOD_SQUARE = [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]
BOW_TIE = [[1000, 1000], [1200, 1200], [1200, 1000], [1000, 1200], [1000, 1000]]
TWO_DISTINCT_POINTS = [[500, 500], [600, 600], [500, 500], [600, 600]]
ZERO_AREA_LINE = [[500, 500], [600, 500], [700, 500], [500, 500]]
OUTSIDE_SLIDE = [[5000, 5000], [5200, 5000], [5200, 5200], [5000, 5200], [5000, 5000]]


def qupath_feature(shared_data: Path, ring: list, class_name: str | None = "Glomerulus") -> dict:
    """Return a QuPath 0.4 annotation feature with one polygon ring and a class (or none)."""
    document = json.loads((shared_data / REAL_QUPATH_EXPORT).read_text(encoding="utf-8"))
    feature = copy.deepcopy(document["features"][0])
    feature.pop("nucleusGeometry", None)
    feature["id"] = str(uuid.uuid4())
    feature["geometry"] = {"type": "Polygon", "coordinates": [ring]}
    properties = feature["properties"]
    properties["objectType"] = "annotation"
    if class_name is None:
        properties.pop("classification", None)
    else:
        properties["classification"] = {"name": class_name, "color": [0, 128, 128]}
    return feature


def write_collection(folder: Path, name: str, features: list) -> Path:
    """Write features as a FeatureCollection. Python's json writes NaN as the bare token."""
    path = folder / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def not_json(folder: Path) -> Path:
    """Write plain text under a GeoJSON name."""
    path = folder / "notes.geojson"
    path.write_text("Glomeruli were counted by hand.\n")
    return path


def truncated_export(shared_data: Path, folder: Path) -> Path:
    """Write the first half of the real QuPath export, as an interrupted download leaves it."""
    content = (shared_data / REAL_QUPATH_EXPORT).read_bytes()
    path = folder / "truncated.geojson"
    path.write_bytes(content[: len(content) // 2])
    return path


def dsa_documents(shared_data: Path, folder: Path) -> Path:
    """Write a copy of the real Digital Slide Archive annotation documents: JSON, not GeoJSON."""
    path = folder / "dsa_annotations.json"
    path.write_bytes((shared_data / REAL_DSA_DOCUMENTS).read_bytes())
    return path


def features_not_array(shared_data: Path, folder: Path) -> Path:
    """Write a FeatureCollection whose "features" is an object, not an array."""
    feature = qupath_feature(shared_data, GOOD_SQUARE)
    path = folder / "features_object.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": {"0": feature}}))
    return path


def nan_coordinates(shared_data: Path, folder: Path) -> Path:
    """Write one feature whose second position is [NaN, NaN]."""
    ring = [list(point) for point in GOOD_SQUARE]
    ring[1] = [float("nan"), float("nan")]
    return write_collection(folder, "nan.geojson", [qupath_feature(shared_data, ring)])


def bow_tie(shared_data: Path, folder: Path) -> Path:
    """Write one self-intersecting (bow-tie) polygon."""
    return write_collection(folder, "bow_tie.geojson", [qupath_feature(shared_data, BOW_TIE)])


def degenerate_polygons(shared_data: Path, folder: Path) -> Path:
    """Write two degenerate polygons: two distinct points, and three collinear points."""
    features = [
        qupath_feature(shared_data, TWO_DISTINCT_POINTS),
        qupath_feature(shared_data, ZERO_AREA_LINE),
    ]
    return write_collection(folder, "degenerate.geojson", features)


def unknown_classes(shared_data: Path, folder: Path) -> Path:
    """Write three features: two of class "Tumor" and one of class "Stroma"."""
    features = [
        qupath_feature(shared_data, GOOD_SQUARE, "Tumor"),
        qupath_feature(shared_data, GOOD_SQUARE, "Tumor"),
        qupath_feature(shared_data, GOOD_SQUARE, "Stroma"),
    ]
    return write_collection(folder, "unknown_classes.geojson", features)


def outside_slide(shared_data: Path, folder: Path) -> Path:
    """Write one polygon that lies wholly right of and below the slide."""
    return write_collection(folder, "outside.geojson", [qupath_feature(shared_data, OUTSIDE_SLIDE)])


def empty_collection(folder: Path) -> Path:
    """Write a FeatureCollection without features, as QuPath exports an unannotated image."""
    return write_collection(folder, "empty.geojson", [])


# Index of the bad feature in the mixed file, and how many good ones surround it.
MIXED_BAD_INDEX = 2
MIXED_GOOD_COUNT = 4


def mixed_one_bad(shared_data: Path, folder: Path) -> Path:
    """Write four good squares and, at index 2, one polygon with a NaN coordinate.

    The good squares are glomeruli and vessels, 200 px apart, so none overlaps another.
    """
    features = []
    for index in range(MIXED_GOOD_COUNT):
        offset = 400 * index
        ring = [[x + offset, y] for x, y in GOOD_SQUARE]
        features.append(qupath_feature(shared_data, ring, ("Glomerulus", "Vessel")[index % 2]))
    bad_ring = [list(point) for point in GOOD_SQUARE]
    bad_ring[2] = [float("nan"), 300]
    features.insert(MIXED_BAD_INDEX, qupath_feature(shared_data, bad_ring))
    return write_collection(folder, "mixed.geojson", features)
