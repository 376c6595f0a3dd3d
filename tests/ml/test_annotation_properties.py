"""Property-based checks: written GeoJSON reads back equal, and damaged files never crash."""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from pathlib import Path

import shapely
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from ml.annotation_files import (
    MAX_ABS_COORDINATE_LEVEL0,
    AnnotationFile,
    AnnotationFileError,
    AnnotationObject,
    read_annotation_bytes,
    read_annotation_file,
)
from ml.qupath_geojson import write_qupath_geojson

# Coordinates are drawn from a realistic level-0 range with arbitrary float fractions,
# so the round trip checks float precision, not only integers.
coordinate = st.floats(min_value=0, max_value=200_000, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=4, max_value=5_000, allow_nan=False, allow_infinity=False)


@st.composite
def polygons_with_holes(draw: st.DrawFn, x_offset: float = 0.0) -> Polygon:
    """A box-shaped shell with up to 4 box holes, one in each quarter of the shell."""
    x_min = draw(coordinate) + x_offset
    y_min = draw(coordinate)
    width = draw(size)
    height = draw(size)
    holes = []
    for quarter in range(draw(st.integers(min_value=0, max_value=4))):
        cell_x = x_min + (quarter % 2) * width / 2
        cell_y = y_min + (quarter // 2) * height / 2
        margin = draw(st.floats(min_value=0.1, max_value=0.4))
        hole = box(
            cell_x + margin * width / 2,
            cell_y + margin * height / 2,
            cell_x + (1 - margin) * width / 2,
            cell_y + (1 - margin) * height / 2,
        )
        holes.append(list(hole.exterior.coords))
    shell = list(box(x_min, y_min, x_min + width, y_min + height).exterior.coords)
    return Polygon(shell, holes)


@st.composite
def level0_geometries(draw: st.DrawFn) -> Polygon | MultiPolygon:
    part_count = draw(st.integers(min_value=1, max_value=3))
    # Each part starts right of the previous one, so the parts never overlap.
    parts = [draw(polygons_with_holes(x_offset=index * 210_000.0)) for index in range(part_count)]
    return parts[0] if part_count == 1 else MultiPolygon(parts)


measurement_names = st.text(min_size=1, max_size=12)
finite_values = st.floats(allow_nan=False, allow_infinity=False)
rgb = st.tuples(*(st.integers(min_value=0, max_value=255) for _ in range(3)))


@st.composite
def annotation_objects(draw: st.DrawFn, index: int) -> AnnotationObject:
    class_name = draw(st.none() | st.text(min_size=1, max_size=20))
    return AnnotationObject(
        index=index,
        geometry_level0=draw(level0_geometries()),
        class_name=class_name,
        class_color_rgb=draw(rgb) if class_name is not None else None,
        object_type=draw(st.sampled_from(["annotation", "detection", "cell", "tile"])),
        measurements=draw(st.dictionaries(measurement_names, finite_values, max_size=4)),
    )


@st.composite
def object_lists(draw: st.DrawFn) -> list[AnnotationObject]:
    count = draw(st.integers(min_value=0, max_value=4))
    return [draw(annotation_objects(index)) for index in range(count)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects=object_lists())
def test_written_objects_read_back_equal(tmp_path: Path, objects) -> None:
    path = tmp_path / "round_trip.geojson"

    write_qupath_geojson(objects, path)
    annotations = read_annotation_file(path)

    assert annotations.skipped == ()
    assert annotations.repaired == 0
    assert len(annotations.objects) == len(objects)
    for before, after in zip(objects, annotations.objects, strict=True):
        assert shapely.to_wkb(after.geometry_level0) == shapely.to_wkb(before.geometry_level0)
        assert after.class_name == before.class_name
        assert after.class_color_rgb == before.class_color_rgb
        assert after.object_type == before.object_type
        assert after.measurements == before.measurements


VALID_COLLECTION = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "5868af7c-9aaf-4646-b618-e0a3cf74b94f",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
                    [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]],
                ],
            },
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "colorRGB": -3670016},
                "measurements": [{"name": "Area", "value": 96}],
            },
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[20, 0], [30, 0], [30, 10], [20, 0]]],
                    [[[40, 0], [50, 0], [50, 10], [40, 10], [40, 0]]],
                ],
            },
            "properties": {
                "objectType": "cell",
                "classification": {"name": "Other", "color": [0, 128, 128]},
                "measurements": {"Area": 150.0, "Mean": "NaN"},
                "label": "x",
            },
        },
    ],
}

bad_values = st.sampled_from(
    [None, "NaN", "abc", "", [], {}, [[]], 0, -1, True, 1e308, math.nan, math.inf, [1, "2"]]
)


def json_paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Return the path (keys and indexes) of every value inside a parsed JSON document."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(json_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            paths.extend(json_paths(item, (*prefix, position)))
    return paths


@st.composite
def damaged_documents(draw: st.DrawFn) -> object:
    document = copy.deepcopy(VALID_COLLECTION)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = json_paths(document)
        path = draw(st.sampled_from(paths))
        # A copy, so that later steps never modify the strategy's own lists and dicts.
        bad_value = copy.deepcopy(draw(bad_values))
        if not path:
            document = bad_value
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = bad_value
    return document


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=damaged_documents())
def test_damaged_files_skip_or_raise(tmp_path: Path, document) -> None:
    path = tmp_path / "damaged.geojson"
    path.write_text(json.dumps(document), encoding="utf-8")

    try:
        annotations = read_annotation_file(path)
    except AnnotationFileError as error:
        assert str(path) in str(error)
        return

    indexes = [obj.index for obj in annotations.objects] + [
        skipped.index for skipped in annotations.skipped
    ]
    assert sorted(indexes) == list(range(len(indexes)))
    assert all(obj.geometry_level0.is_valid for obj in annotations.objects)
    assert all(skipped.reason for skipped in annotations.skipped)
    # Whatever was imported can be exported as strict JSON.
    write_qupath_geojson(annotations.objects, tmp_path / "exported.geojson")


# --- Mutations of real exports ------------------------------------------------------------
#
# The real exports below are mutated, as bytes or as parsed JSON, and read again. The
# reader must either raise AnnotationFileError with a message that names the file, or
# return valid objects and skip the rest with a documented reason.

REAL_GEOJSON = (
    Path("annotations/qupath_geojson/histoqc_qupath02_multipolygon_tumor_invborder.json"),
    Path("annotations/qupath_geojson/qupath_core_test_polygon_bare_multipolygon.geojson"),
    Path("annotations/qupath_geojson/luna_test_cell_detections_SEMISYNTHETIC.geojson"),
    Path("annotations/other_geojson/luna_dsa_export_1006844.annotation.geojson"),
)
REAL_XML = (
    Path("annotations/asap_xml/pathmltut_OC-AH-019_RES_spline_polygon.xml"),
    Path("annotations/asap_xml/pathmltut_camelyon16_normal_004_tissue.xml"),
    Path("annotations/aperio_xml/histoqc_TCGA-EJ-5518-01Z-00-DX1.xml"),
)

_WHERE = r"(position \d+ of ring \d+ of polygon \d+|Coordinate \d+|Vertex \d+)"
_JSON_TYPE = r"(an object|an array|a string|a boolean|a number|null)"
# Every skip reason the readers give, as listed in docs/errors.md.
DOCUMENTED_REASON = re.compile("|".join([
    rf"not a GeoJSON Feature \(found {_JSON_TYPE}\)",
    rf'"properties" is {_JSON_TYPE}, expected an object',
    rf'"classification" is {_JSON_TYPE}, expected an object with "name" or a string',
    r'"classification" has no string "name", so the class cannot be read',
    r"the feature has no geometry",
    rf'"geometry" is {_JSON_TYPE}, expected an object',
    rf'geometry "type" is {_JSON_TYPE}, expected a string',
    rf"MultiPolygon coordinates are {_JSON_TYPE}, expected an array",
    r"unsupported geometry: GeometryCollection without polygons",
    r"unsupported geometry type \w+: only Polygon and MultiPolygon have an area",
    r"unknown geometry type '.*'",
    rf"coordinates of polygon \d+ are {_JSON_TYPE}, expected an array of rings",
    rf"ring \d+ of polygon \d+ is {_JSON_TYPE}, expected an array",
    rf"position \d+ of ring \d+ of polygon \d+ is {_JSON_TYPE}, expected \[x, y\]",
    rf"non-numeric coordinate .+ at {_WHERE}",
    rf"coordinate out of floating-point range at {_WHERE}",
    rf"NaN or infinite coordinate at {_WHERE}",
    rf"coordinate \S+ at {_WHERE} is outside \+-1e\+09 level-0 pixels",
    r"degenerate: the geometry has no polygons",
    r"degenerate: polygon \d+ has no rings",
    r"degenerate: ring \d+ of polygon \d+ has fewer than 3 distinct points",
    r"degenerate: zero area",
    r"degenerate: the outline is invalid and no area remains after repair",
    r"the outline is invalid and could not be repaired",
    r"ASAP \w+ is a point annotation, not an area",
    r"unsupported ASAP annotation type .+",
    r"invalid Order .+ at Coordinate \d+",
    r"missing [XY] attribute at (Coordinate|Vertex) \d+",
]), re.DOTALL)


@functools.cache
def real_bytes(path: Path) -> bytes:
    """Return the content of a real export, read once per session."""
    return path.read_bytes()


@functools.cache
def real_baseline(path: Path) -> AnnotationFile:
    """Return a real export as read unchanged, once per session."""
    return read_annotation_bytes(real_bytes(path), path.name)


def read_documented(content: bytes, source: str) -> AnnotationFile | None:
    """Read ``content`` and check the documented outcome. Return None for a rejected file."""
    try:
        annotations = read_annotation_bytes(content, source)
    except AnnotationFileError as error:
        assert str(error).startswith(f"Annotation file {source} ")
        event("file rejected")
        return None
    event("objects skipped" if annotations.skipped else "every object read")

    indexes = [obj.index for obj in annotations.objects]
    indexes += [skipped.index for skipped in annotations.skipped]
    assert sorted(indexes) == list(range(len(indexes)))
    for obj in annotations.objects:
        geometry = obj.geometry_level0
        assert isinstance(geometry, (Polygon, MultiPolygon))
        assert geometry.is_valid
        assert not geometry.is_empty
        assert geometry.area > 0
        x_min, y_min, x_max, y_max = geometry.bounds
        assert -MAX_ABS_COORDINATE_LEVEL0 <= x_min <= x_max <= MAX_ABS_COORDINATE_LEVEL0
        assert -MAX_ABS_COORDINATE_LEVEL0 <= y_min <= y_max <= MAX_ABS_COORDINATE_LEVEL0
        assert obj.class_name is None or (isinstance(obj.class_name, str) and obj.class_name)
    for skipped in annotations.skipped:
        assert DOCUMENTED_REASON.fullmatch(skipped.reason), skipped.reason
    return annotations


@settings(max_examples=1500, deadline=None)
@given(data=st.data())
def test_real_files_mutated_bytes(shared_data: Path, data: st.DataObject) -> None:
    relative = data.draw(st.sampled_from(REAL_GEOJSON + REAL_XML), label="source")
    content = bytearray(real_bytes(shared_data / relative))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4), label="mutations")):
        position = data.draw(st.integers(min_value=0, max_value=len(content)), label="position")
        operation = data.draw(
            st.sampled_from(["set", "delete", "insert", "truncate", "repeat"]), label="operation"
        )
        length = data.draw(st.integers(min_value=1, max_value=64), label="length")
        if operation == "set" and position < len(content):
            content[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif operation == "delete":
            del content[position : position + length]
        elif operation == "insert":
            content[position:position] = data.draw(st.binary(min_size=1, max_size=length))
        elif operation == "truncate":
            del content[position:]
        elif operation == "repeat":
            content[position:position] = content[position : position + length]

    read_documented(bytes(content), relative.name)


# Replacement values for structure mutations: wrong types, non-finite and huge numbers,
# and shapes that look almost right.
replacement_values = st.sampled_from([
    None, True, False, 0, -1, 1.5, "", "abc", "NaN", "Polygon", [], {}, [[]], [[[]]],
    [1, "2"], [0, 0], math.nan, math.inf, -math.inf, 1e308, 1e10, -1e10, 10**400,
    {"type": "Polygon"}, {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},
    {"name": "Tumor"}, {"names": ["Tumor", "Positive"]},
])
type_names = st.sampled_from([
    "Feature", "FeatureCollection", "Polygon", "MultiPolygon", "GeometryCollection",
    "LineString", "Point", "polygon", "", "Topology",
])


def feature_index(document: object, path: tuple) -> int | None:
    """Return the index of the feature that ``path`` lies inside, or None for a path
    that can change every feature (the top level, or the list of features itself)."""
    if isinstance(document, list) and len(path) >= 1:
        return path[0]
    if (
        isinstance(document, dict)
        and document.get("type") == "FeatureCollection"
        and len(path) >= 2
        and path[0] == "features"
    ):
        return path[1]
    return None


def mutate_at(data: st.DataObject, parent: dict | list, key: object) -> bool:
    """Apply one drawn mutation to ``parent[key]`` and return whether its length changed."""
    value = parent[key]
    operation = data.draw(st.sampled_from(
        ["replace", "delete", "rename", "number", "type", "wrap", "unwrap", "duplicate"]
    ), label="operation")
    # Only numbers of the real files and the finite replacements, not 10**400.
    is_number = isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63
    )

    if operation == "delete":
        del parent[key]
        return True
    if operation == "rename" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from([key.upper(), key + "_", ""]))] = parent.pop(key)
        return True
    if operation == "number" and is_number:
        number = float(value)
        parent[key] = data.draw(st.sampled_from([
            -number, number * 1e6, number + 0.5, number + 1e-9, -0.0, 1e9 + 1, number * 2**-1074,
        ]))
        return False
    if operation == "type" and isinstance(value, str):
        parent[key] = data.draw(type_names)
        return False
    if operation == "wrap":
        parent[key] = [value]
        return False
    if operation == "unwrap" and isinstance(value, list) and value:
        parent[key] = value[0]
        return False
    if operation == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(value))
        return True

    parent[key] = copy.deepcopy(data.draw(replacement_values, label="replacement"))
    return False


def draw_path(data: st.DataObject, document: object) -> tuple:
    """Walk down from the root, then on 9 times in 10, so coordinates are often reached.

    The root itself is never chosen: test_damaged_files_skip_or_raise replaces it.
    """
    path: list = []
    node = document
    while isinstance(node, (dict, list)) and node and (
        not path or data.draw(st.integers(0, 9)) > 0
    ):
        if isinstance(node, dict):
            key = data.draw(st.sampled_from(sorted(node)))
        else:
            key = data.draw(st.integers(min_value=0, max_value=len(node) - 1))
        path.append(key)
        node = node[key]
    return tuple(path)


@settings(max_examples=2000, deadline=None)
@given(data=st.data())
def test_real_files_mutated_structure(shared_data: Path, data: st.DataObject) -> None:
    relative = data.draw(st.sampled_from(REAL_GEOJSON), label="source")
    content = real_bytes(shared_data / relative)
    baseline = real_baseline(shared_data / relative)
    document = json.loads(content)
    touched: set[int] = set()
    every_feature_touched = False

    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        path = draw_path(data, document)
        if not path:
            # An earlier mutation left a document without children.
            break
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        index = feature_index(document, path)
        length_changed = mutate_at(data, parent, path[-1])
        # A changed length of the list of features shifts the index of every later feature.
        features_path_length = 1 if isinstance(document, list) else 2
        if index is None or (length_changed and len(path) == features_path_length):
            every_feature_touched = True
        else:
            touched.add(index)

    annotations = read_documented(json.dumps(document).encode(), relative.name)

    if annotations is None or every_feature_touched:
        return
    # Objects whose feature no mutation touched come out exactly as from the real file.
    read_back = {obj.index: obj for obj in annotations.objects}
    for before in baseline.objects:
        if before.index in touched:
            continue
        after = read_back[before.index]
        assert shapely.to_wkb(after.geometry_level0) == shapely.to_wkb(before.geometry_level0)
        assert after.class_name == before.class_name
