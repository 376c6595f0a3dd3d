"""Property-based checks: written GeoJSON reads back equal, and damaged files never crash."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from ml.annotation_files import AnnotationFileError, AnnotationObject, read_annotation_file
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
