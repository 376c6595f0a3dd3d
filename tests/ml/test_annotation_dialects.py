"""Hand-built annotation files: every GeoJSON dialect, bad geometry, bad files, XML cases."""

from __future__ import annotations

import io
import json
import math
import uuid
from pathlib import Path

import pytest
from shapely.geometry import MultiPolygon, Polygon

from ml.annotation_files import (
    AnnotationFileError,
    AnnotationObject,
    read_annotation_bytes,
    read_annotation_file,
)
from ml.qupath_geojson import unpack_qupath_rgb, write_qupath_geojson

SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
SQUARE_WITH_HOLE = [
    [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
    [[2, 2], [2, 4], [4, 4], [4, 2], [2, 2]],
]


def write_json_text(tmp_path: Path, text: str, name: str = "annotations.geojson") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def write_json(tmp_path: Path, document: object) -> Path:
    return write_json_text(tmp_path, json.dumps(document))


def feature(geometry: dict, **properties: object) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def polygon(coordinates: list = SQUARE) -> dict:
    return {"type": "Polygon", "coordinates": coordinates}


def collection(*features: dict) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


# GeoJSON dialects


def test_single_feature(tmp_path) -> None:
    path = write_json(tmp_path, feature(polygon(), objectType="detection", classification="Glom"))

    annotations = read_annotation_file(path)

    (obj,) = annotations.objects
    assert obj.object_type == "detection"
    assert obj.class_name == "Glom"
    assert obj.class_color_rgb is None
    assert obj.geometry_level0.area == 100.0


def test_bare_polygon(tmp_path) -> None:
    path = write_json(tmp_path, polygon(SQUARE_WITH_HOLE))

    annotations = read_annotation_file(path)

    (obj,) = annotations.objects
    assert isinstance(obj.geometry_level0, Polygon)
    assert len(obj.geometry_level0.interiors) == 1
    assert obj.geometry_level0.area == 96.0
    assert obj.class_name is None
    assert annotations.class_counts == {None: 1}


def test_bare_feature_array(tmp_path) -> None:
    path = write_json(tmp_path, [feature(polygon()), feature(polygon())])

    assert len(read_annotation_file(path).objects) == 2


def test_format_detected_by_content(tmp_path) -> None:
    path = write_json_text(tmp_path, json.dumps(polygon()), name="annotations.xml")

    assert read_annotation_file(path).format == "geojson"


def test_legacy_ids_give_object_type(tmp_path) -> None:
    document = [
        {"type": "Feature", "id": "PathDetectionObject", "geometry": polygon(), "properties": {}},
        feature(polygon(), id="PathCellObject"),
        feature(polygon()),
    ]
    path = write_json(tmp_path, document)

    objects = read_annotation_file(path).objects

    assert [obj.object_type for obj in objects] == ["detection", "cell", "annotation"]
    assert [obj.properties for obj in objects] == [{}, {}, {}]


def test_color_rgb_decoding() -> None:
    assert unpack_qupath_rgb(-3670016) == (200, 0, 0)
    assert unpack_qupath_rgb(-16711936) == (0, 255, 0)
    assert unpack_qupath_rgb(0x00FF8040) == (255, 128, 64)
    assert unpack_qupath_rgb(-1) == (255, 255, 255)


def test_classification_forms(tmp_path) -> None:
    document = collection(
        feature(polygon(), classification={"name": "Tumor", "colorRGB": -3670016}),
        feature(polygon(), classification={"name": "Vessel", "color": [1, 2, 3]}),
        feature(polygon(), classification={"names": ["Tumor", "Positive"]}),
        feature(polygon(), classification={"name": "Glom", "color": [300, 0, 0]}),
        feature(polygon(), classification="Stroma"),
    )
    path = write_json(tmp_path, document)

    objects = read_annotation_file(path).objects

    assert [(obj.class_name, obj.class_color_rgb) for obj in objects] == [
        ("Tumor", (200, 0, 0)),
        ("Vessel", (1, 2, 3)),
        ("Tumor: Positive", None),
        ("Glom", None),
        ("Stroma", None),
    ]


def test_invalid_classification_skipped(tmp_path) -> None:
    path = write_json(
        tmp_path,
        collection(
            feature(polygon(), classification=7),
            feature(polygon(), classification={"color": [1, 2, 3]}),
        ),
    )

    annotations = read_annotation_file(path)

    assert annotations.objects == ()
    assert [skipped.index for skipped in annotations.skipped] == [0, 1]
    assert "classification" in annotations.skipped[0].reason
    assert "name" in annotations.skipped[1].reason


def test_class_fallback_rule(tmp_path) -> None:
    document = collection(
        feature(polygon(), label="TILs", group="Other"),
        feature(polygon(), label={"value": "Tumor"}),
        feature(polygon(), group="Stroma"),
        feature(polygon(), name="Glomerulus"),
        # QuPath's "name" is the object's own name, not its class.
        feature(polygon(), objectType="annotation", name="Glomerulus 12"),
        feature(polygon(), classification={"name": "Vessel"}, label="TILs"),
    )
    path = write_json(tmp_path, document)

    objects = read_annotation_file(path).objects

    assert [obj.class_name for obj in objects] == [
        "TILs",
        "Tumor",
        "Stroma",
        "Glomerulus",
        None,
        "Vessel",
    ]
    assert objects[4].properties == {"name": "Glomerulus 12"}


def test_measurements_dict_and_list(tmp_path) -> None:
    text = json.dumps(
        collection(
            feature(polygon(), measurements={"Area": 12.5, "Perimeter": "NaN", "Count": 3}),
            feature(
                polygon(),
                measurements=[
                    {"name": "Area", "value": 7},
                    {"name": "Mean", "value": "NaN"},
                    {"name": "Max", "value": "Infinity"},
                    {"name": "Flag", "value": True},
                    "broken entry",
                ],
            ),
            feature(polygon(), measurements={"Area": 1.0, "Mean": float("nan")}),
        )
    )
    # json.dumps writes the float NaN as the bare token NaN, which Python's json reads.
    assert "NaN}" in text
    path = write_json_text(tmp_path, text)

    objects = read_annotation_file(path).objects

    assert [obj.measurements for obj in objects] == [
        {"Area": 12.5, "Count": 3.0},
        {"Area": 7.0},
        {"Area": 1.0},
    ]


def test_extra_properties_kept(tmp_path) -> None:
    path = write_json(
        tmp_path, feature(polygon(), isLocked=True, metadata={"reviewer": "ab"}, name="G1")
    )

    (obj,) = read_annotation_file(path).objects

    assert obj.properties == {"isLocked": True, "metadata": {"reviewer": "ab"}, "name": "G1"}


def test_geometry_collection_polygons(tmp_path) -> None:
    geometry = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Point", "coordinates": [1, 1]},
            polygon(),
            {"type": "Polygon", "coordinates": [[[20, 0], [30, 0], [30, 10], [20, 0]]]},
        ],
    }
    lines_only = {
        "type": "GeometryCollection",
        "geometries": [{"type": "LineString", "coordinates": [[0, 0], [1, 1]]}],
    }
    path = write_json(tmp_path, collection(feature(geometry), feature(lines_only)))

    annotations = read_annotation_file(path)

    (obj,) = annotations.objects
    assert isinstance(obj.geometry_level0, MultiPolygon)
    assert obj.geometry_level0.area == 150.0
    assert annotations.skipped[0].index == 1
    assert "GeometryCollection without polygons" in annotations.skipped[0].reason


# Geometry rules


def test_nan_coordinate_skipped(tmp_path) -> None:
    text = json.dumps(
        collection(
            feature(polygon()),
            feature(polygon([[[0, 0], [float("nan"), 0], [10, 10], [0, 0]]])),
            feature(polygon([[[0, 0], ["5", 0], [10, 10], [0, 0]]])),
            feature(polygon([[[0, 0], [True, 0], [10, 10], [0, 0]]])),
        )
    )
    path = write_json_text(tmp_path, text)

    annotations = read_annotation_file(path)

    assert len(annotations.objects) == 1
    assert [skipped.index for skipped in annotations.skipped] == [1, 2, 3]
    assert annotations.skipped[0].reason == (
        "NaN or infinite coordinate at position 1 of ring 0 of polygon 0"
    )
    assert annotations.skipped[1].reason == (
        "non-numeric coordinate '5' at position 1 of ring 0 of polygon 0"
    )
    assert "non-numeric coordinate True" in annotations.skipped[2].reason


def test_self_intersecting_bow_tie_repaired(tmp_path) -> None:
    bow_tie = [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]
    path = write_json(tmp_path, collection(feature(polygon(bow_tie), classification="Tubule")))

    annotations = read_annotation_file(path)

    (obj,) = annotations.objects
    assert annotations.repaired == 1
    assert isinstance(obj.geometry_level0, MultiPolygon)
    assert len(obj.geometry_level0.geoms) == 2
    assert obj.geometry_level0.area == 2.0
    assert obj.class_name == "Tubule"


def test_degenerate_ring_skipped_with_index(tmp_path) -> None:
    two_points = [[[0, 0], [5, 5], [0, 0]]]
    collinear = [[[0, 0], [5, 5], [10, 10], [0, 0]]]
    path = write_json(
        tmp_path,
        collection(feature(polygon()), feature(polygon(two_points)), feature(polygon(collinear))),
    )

    annotations = read_annotation_file(path)

    assert [obj.index for obj in annotations.objects] == [0]
    assert [skipped.index for skipped in annotations.skipped] == [1, 2]
    assert annotations.skipped[0].reason == (
        "degenerate: ring 0 of polygon 0 has fewer than 3 distinct points"
    )
    assert annotations.skipped[1].reason.startswith("degenerate")


def test_degenerate_hole_skips_object(tmp_path) -> None:
    rings = [SQUARE[0], [[2, 2], [3, 3], [2, 2]]]
    path = write_json(tmp_path, feature(polygon(rings)))

    annotations = read_annotation_file(path)

    assert annotations.objects == ()
    assert "ring 1 of polygon 0" in annotations.skipped[0].reason


def test_point_feature_skipped(tmp_path) -> None:
    path = write_json(
        tmp_path,
        collection(
            feature({"type": "Point", "coordinates": [5, 5]}),
            feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
            feature(None),
            {"type": "Polygon", "coordinates": SQUARE},
        ),
    )

    annotations = read_annotation_file(path)

    assert annotations.objects == ()
    reasons = [skipped.reason for skipped in annotations.skipped]
    assert reasons[0].startswith("unsupported geometry type Point")
    assert reasons[1].startswith("unsupported geometry type LineString")
    assert reasons[2] == "the feature has no geometry"
    assert reasons[3] == "not a GeoJSON Feature (found an object)"


def test_empty_feature_collection(tmp_path) -> None:
    path = write_json(tmp_path, collection())

    annotations = read_annotation_file(path)

    assert annotations.objects == ()
    assert annotations.skipped == ()
    assert annotations.class_counts == {}


# Files that are not annotation files


def test_not_json_rejected(tmp_path) -> None:
    path = write_json_text(tmp_path, "x,y\n1,2\n", name="points.csv")

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    message = str(raised.value)
    assert str(path) in message
    assert "neither JSON nor XML" in message
    assert "ASAP XML" in message


def test_truncated_json_names_position(tmp_path) -> None:
    text = json.dumps(collection(feature(polygon())), indent=1)
    path = write_json_text(tmp_path, text[:60])

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    message = str(raised.value)
    assert str(path) in message
    assert "not valid JSON" in message
    assert "line 5, column 10" in message
    assert "(character 60)" in message


@pytest.mark.parametrize("content", [b"", b"  \n\t", b"\xef\xbb\xbf\n"])
def test_empty_file_rejected(tmp_path, content) -> None:
    path = tmp_path / "empty.geojson"
    path.write_bytes(content)

    with pytest.raises(AnnotationFileError, match="is empty"):
        read_annotation_file(path)


def test_missing_file_rejected(tmp_path) -> None:
    path = tmp_path / "absent.geojson"

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    assert str(path) in str(raised.value)
    assert "cannot be read" in str(raised.value)


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"slide": "a.svs", "objects": []}, "not GeoJSON"),
        ({"type": "Topology"}, "'Topology'"),
        ([1, 2, 3], "without GeoJSON Features"),
        ("just a string", "contains a single value"),
        (42, "contains a single value"),
        ({"type": "FeatureCollection", "features": {}}, "expected an array"),
    ],
)
def test_other_json_rejected(tmp_path, document, expected) -> None:
    path = write_json(tmp_path, document)

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_other_xml_rejected(tmp_path) -> None:
    path = write_json_text(tmp_path, '<svg xmlns="http://www.w3.org/2000/svg"/>', "a.xml")

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    assert "root element <{http://www.w3.org/2000/svg}svg>" in str(raised.value)
    assert "<ASAP_Annotations>" in str(raised.value)


def test_truncated_xml_rejected(tmp_path) -> None:
    path = write_json_text(tmp_path, "<ASAP_Annotations><Annotations>", "a.xml")

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    assert str(path) in str(raised.value)
    assert "not well-formed XML" in str(raised.value)
    assert "line 1, column 31" in str(raised.value)


def test_invalid_utf8_json_rejected(tmp_path) -> None:
    path = tmp_path / "latin1.geojson"
    path.write_bytes(b'{"type": "Feature", "properties": {"name": "\xe9"}}')

    with pytest.raises(AnnotationFileError, match="not UTF-8"):
        read_annotation_file(path)


def test_read_bytes_names_source() -> None:
    content = json.dumps(polygon()).encode()

    annotations = read_annotation_bytes(content, "upload.geojson")

    assert annotations.path == Path("upload.geojson")
    assert len(annotations.objects) == 1


# ASAP and Aperio XML


ASAP_DOCUMENT = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="A0" Type="Polygon" PartOfGroup="None" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="2" X="10" Y="10" />
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="3" X="0" Y="10" />
        <Coordinate Order="1" X="10" Y="0" />
      </Coordinates>
    </Annotation>
    <Annotation Name="A1" Type="Dot" PartOfGroup="glom" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
    <Annotation Name="A2" Type="PointSet" PartOfGroup="glom" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="5" Y="5" /></Coordinates>
    </Annotation>
    <Annotation Name="A3" Type="Rectangle" PartOfGroup="glom" Color="#FF0000">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="4" Y="0" />
        <Coordinate Order="2" X="4" Y="3" />
        <Coordinate Order="3" X="0" Y="3" />
      </Coordinates>
    </Annotation>
    <Annotation Name="A4" Type="Polygon" PartOfGroup="glom" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="1,5" Y="0" />
        <Coordinate Order="2" X="1" Y="1" />
      </Coordinates>
    </Annotation>
    <Annotation Name="A5" Type="Spline" PartOfGroup="vessel" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" />
        <Coordinate Order="1" X="4" Y="0" />
        <Coordinate Order="2" X="4" Y="4" />
        <Coordinate Order="3" X="0" Y="4" />
      </Coordinates>
    </Annotation>
    <Annotation Name="A6" Type="Measurement" PartOfGroup="None" Color="#F4FA58" />
  </Annotations>
  <AnnotationGroups>
    <Group Name="vessel" PartOfGroup="None" Color="#0000FF"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def test_asap_types_and_order(tmp_path) -> None:
    path = write_json_text(tmp_path, ASAP_DOCUMENT, "asap.xml")

    annotations = read_annotation_file(path)

    assert annotations.format == "asap_xml"
    assert [obj.index for obj in annotations.objects] == [0, 3, 5]
    square, rectangle, spline = annotations.objects
    # Coordinates are sorted by Order, so the square is not a bow-tie.
    assert list(square.geometry_level0.exterior.coords) == [
        (0.0, 0.0),
        (10.0, 0.0),
        (10.0, 10.0),
        (0.0, 10.0),
        (0.0, 0.0),
    ]
    assert square.class_name is None
    # A group without an AnnotationGroups entry takes the annotation's colour.
    assert (rectangle.class_name, rectangle.class_color_rgb) == ("glom", (255, 0, 0))
    assert rectangle.geometry_level0.area == 12.0
    assert (spline.class_name, spline.class_color_rgb) == ("vessel", (0, 0, 255))
    assert annotations.approximated_splines == 1
    assert annotations.class_counts == {None: 1, "glom": 1, "vessel": 1}
    assert annotations.repaired == 0


def test_asap_skip_reasons(tmp_path) -> None:
    path = write_json_text(tmp_path, ASAP_DOCUMENT, "asap.xml")

    skipped = read_annotation_file(path).skipped

    assert [(item.index, item.reason) for item in skipped] == [
        (1, "ASAP Dot is a point annotation, not an area"),
        (2, "ASAP PointSet is a point annotation, not an area"),
        (4, "non-numeric coordinate '1,5' at Coordinate 1"),
        (6, "unsupported ASAP annotation type 'Measurement'"),
    ]


def test_asap_spline_cuts_curve(tmp_path) -> None:
    # Limitation: a spline through the corners of a 4 x 4 square bulges outside it, but
    # the control-point polygon is the square itself.
    path = write_json_text(tmp_path, ASAP_DOCUMENT, "asap.xml")

    spline = read_annotation_file(path).objects[2]

    assert spline.geometry_level0.area == 16.0


APERIO_DOCUMENT = """<Annotations MicronsPerPixel="0.25">
  <Annotation Id="1" Name="Glomerulus" LineColor="255">
    <Regions>
      <Region Id="1" Type="0" NegativeROA="0" Text="G1">
        <Vertices>
          <Vertex X="0" Y="0"/><Vertex X="10" Y="0"/><Vertex X="10" Y="10"/><Vertex X="0" Y="10"/>
        </Vertices>
      </Region>
      <Region Id="2" Type="0" NegativeROA="1">
        <Vertices>
          <Vertex X="2" Y="2"/><Vertex X="4" Y="2"/><Vertex X="4" Y="4"/><Vertex X="2" Y="4"/>
        </Vertices>
      </Region>
    </Regions>
  </Annotation>
  <Annotation Id="2" Name="" LineColor="65280">
    <Regions>
      <Region Id="1" Type="3">
        <Vertices><Vertex X="0" Y="0"/><Vertex X="5" Y="5"/></Vertices>
      </Region>
      <Region Id="2" Type="0">
        <Vertices><Vertex X="0" Y="0"/><Vertex X="nan" Y="0"/><Vertex X="1" Y="1"/></Vertices>
      </Region>
    </Regions>
  </Annotation>
</Annotations>
"""


def test_aperio_layers_and_skips(tmp_path) -> None:
    path = write_json_text(tmp_path, APERIO_DOCUMENT, "aperio.xml")

    annotations = read_annotation_file(path)

    assert annotations.format == "aperio_xml"
    assert [obj.index for obj in annotations.objects] == [0, 1]
    first = annotations.objects[0]
    assert (first.class_name, first.class_color_rgb) == ("Glomerulus", (255, 0, 0))
    assert first.properties["name"] == "G1"
    assert [(item.index, item.reason) for item in annotations.skipped] == [
        (2, "degenerate: ring 0 of polygon 0 has fewer than 3 distinct points"),
        (3, "NaN or infinite coordinate at Vertex 1"),
    ]


def test_aperio_negative_region_not_subtracted(tmp_path) -> None:
    # Limitation: the negative region stays a separate object, and the first region
    # keeps its full area instead of getting a hole.
    path = write_json_text(tmp_path, APERIO_DOCUMENT, "aperio.xml")

    outer, negative = read_annotation_file(path).objects

    assert outer.geometry_level0.area == 100.0
    assert negative.properties["negative_roa"] is True
    assert negative.geometry_level0.area == 4.0


# Writer


def square_object(index: int = 0, **fields: object) -> AnnotationObject:
    return AnnotationObject(index=index, geometry_level0=Polygon(SQUARE[0]), **fields)


def test_writer_feature_layout() -> None:
    stream = io.StringIO()
    objects = [
        square_object(
            class_name="Glomerulus",
            class_color_rgb=(10, 20, 30),
            measurements={"Area": 100.0},
            properties={"id": "5868af7c-9aaf-4646-b618-e0a3cf74b94f", "isLocked": True},
        ),
        square_object(1, object_type="detection"),
    ]

    count = write_qupath_geojson(objects, stream)

    document = json.loads(stream.getvalue())
    assert count == 2
    assert document["type"] == "FeatureCollection"
    classified, unclassified = document["features"]
    assert classified == {
        "type": "Feature",
        "id": "5868af7c-9aaf-4646-b618-e0a3cf74b94f",
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]],
        },
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "Glomerulus", "color": [10, 20, 30]},
            "measurements": {"Area": 100.0},
            "isLocked": True,
        },
    }
    assert unclassified["properties"] == {"objectType": "detection", "measurements": {}}
    assert uuid.UUID(unclassified["id"]).version == 4


def test_writer_replaces_non_uuid_id(tmp_path) -> None:
    path = tmp_path / "out.geojson"

    write_qupath_geojson([square_object(properties={"id": "82ddcc2295f1e64eab0d1a88"})], path)

    (written,) = json.loads(path.read_text(encoding="utf-8"))["features"]
    assert written["id"] != "82ddcc2295f1e64eab0d1a88"
    assert uuid.UUID(written["id"]).version == 4


def test_writer_output_strict_json(tmp_path) -> None:
    path = tmp_path / "out.geojson"
    obj = square_object(
        measurements={"Area": 100.0, "Mean": math.nan},
        properties={"score": math.inf, "nested": [1.5, math.nan]},
    )

    write_qupath_geojson([obj], path)

    def reject_constant(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    document = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject_constant)
    properties = document["features"][0]["properties"]
    assert properties["measurements"] == {"Area": 100.0}
    assert properties["score"] is None
    assert properties["nested"] == [1.5, None]


def test_writer_keeps_unicode_names(tmp_path) -> None:
    path = tmp_path / "out.geojson"

    write_qupath_geojson([square_object(measurements={"Area µm^2": 6.25})], path)

    assert "Area µm^2" in path.read_text(encoding="utf-8")
    assert read_annotation_file(path).objects[0].measurements == {"Area µm^2": 6.25}


def test_object_rejects_invalid_geometry() -> None:
    bow_tie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])

    with pytest.raises(ValueError, match="valid, non-empty"):
        AnnotationObject(index=3, geometry_level0=bow_tie)


def test_object_rejects_bad_color() -> None:
    with pytest.raises(ValueError, match="class_color_rgb"):
        square_object(class_color_rgb=(0, 0, 256))


def test_huge_coordinate_skipped(tmp_path) -> None:
    path = write_json(tmp_path, feature(polygon([[[0, 0], [1e308, 0], [10, 10], [0, 0]]])))

    (skipped,) = read_annotation_file(path).skipped

    assert skipped.reason == (
        "coordinate 1e+308 at position 1 of ring 0 of polygon 0 is outside +-1e+09 level-0 pixels"
    )
