"""Reading the real annotation files in ../shared/data/annotations, and writing them back.

The pinned numbers were counted independently of ml/ with json and ElementTree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from ml.annotation_files import AnnotationFile, AnnotationFileError, read_annotation_file
from ml.qupath_geojson import write_qupath_geojson

HISTOQC_QUPATH = "qupath_geojson/histoqc_qupath02_multipolygon_tumor_invborder.json"
QUPATH_BARE_MULTIPOLYGON = "qupath_geojson/qupath_core_test_polygon_bare_multipolygon.geojson"
LUNA_CELLS = "qupath_geojson/luna_test_cell_detections_SEMISYNTHETIC.geojson"
LUNA_DSA_GEOJSON = "other_geojson/luna_dsa_export_1006844.annotation.geojson"
ASAP_SPLINES = "asap_xml/pathmltut_OC-AH-019_RES_spline_polygon.xml"
ASAP_CAMELYON = "asap_xml/pathmltut_camelyon16_normal_004_tissue.xml"
APERIO = "aperio_xml/histoqc_TCGA-EJ-5518-01Z-00-DX1.xml"
DSA_DOCUMENTS = "dsa_json/histomicstk_TCGA-A2-A0YE-01Z-00-DX1_annotations.json"
VOC_FILES = [
    "voc_xml_kidney_glomeruli/jinseikenai_OPT_MT_H13-110251_pw40_ds8.xml",
    "voc_xml_kidney_glomeruli/jinseikenai_OPT_PAS_H11-084481_pw40_ds8.xml",
]

# File, format, object count, class counts, repaired count, approximated splines.
EXPECTED_FILES = [
    (HISTOQC_QUPATH, "geojson", 2, {"Tumor": 1, "Invborder": 1}, 0, 0),
    (QUPATH_BARE_MULTIPOLYGON, "geojson", 1, {None: 1}, 0, 0),
    (LUNA_CELLS, "geojson", 2, {"Other": 2}, 0, 0),
    (LUNA_DSA_GEOJSON, "geojson", 15, {"Other": 3, "Tumor": 4, "TILs": 8}, 0, 0),
    (ASAP_SPLINES, "asap_xml", 14, {"artifact": 8, "tissue": 5, "background": 1}, 0, 4),
    (ASAP_CAMELYON, "asap_xml", 39, {"tissue": 38, "trash": 1}, 0, 0),
    (APERIO, "aperio_xml", 4, {None: 4}, 3, 0),
]
READABLE_FILES = [row[0] for row in EXPECTED_FILES]


@pytest.fixture(scope="module")
def annotations_dir(shared_data: Path) -> Path:
    return shared_data / "annotations"


def read(annotations_dir: Path, name: str) -> AnnotationFile:
    return read_annotation_file(annotations_dir / name)


@pytest.mark.parametrize(
    ("name", "annotation_format", "object_count", "class_counts", "repaired", "splines"),
    EXPECTED_FILES,
)
def test_real_file_counts(
    annotations_dir, name, annotation_format, object_count, class_counts, repaired, splines
) -> None:
    annotations = read(annotations_dir, name)

    assert annotations.format == annotation_format
    assert len(annotations.objects) == object_count
    assert annotations.skipped == ()
    assert annotations.class_counts == class_counts
    assert annotations.repaired == repaired
    assert annotations.approximated_splines == splines
    assert [obj.index for obj in annotations.objects] == list(range(object_count))
    assert all(obj.geometry_level0.is_valid for obj in annotations.objects)


def test_histoqc_multipolygons_keep_parts_and_hole(annotations_dir) -> None:
    tumor, invborder = read(annotations_dir, HISTOQC_QUPATH).objects

    assert isinstance(tumor.geometry_level0, MultiPolygon)
    assert isinstance(invborder.geometry_level0, MultiPolygon)
    tumor_parts = [
        (len(part.exterior.coords), len(part.interiors)) for part in tumor.geometry_level0.geoms
    ]
    invborder_parts = [
        (len(part.exterior.coords), len(part.interiors))
        for part in invborder.geometry_level0.geoms
    ]
    assert tumor_parts == [(211, 0), (433, 0), (630, 0)]
    assert invborder_parts == [(261, 1), (424, 0), (420, 0), (158, 0), (209, 0)]
    hole = invborder.geometry_level0.geoms[0].interiors[0]
    assert len(hole.coords) == 203
    assert hole.coords[0] == (44721.43, 65424.6)


def test_histoqc_legacy_type_and_color_rgb(annotations_dir) -> None:
    tumor, invborder = read(annotations_dir, HISTOQC_QUPATH).objects

    # colorRGB -3670016 is ARGB 0xFFC80000 and -16711936 is 0xFF00FF00.
    assert (tumor.class_name, tumor.class_color_rgb) == ("Tumor", (200, 0, 0))
    assert (invborder.class_name, invborder.class_color_rgb) == ("Invborder", (0, 255, 0))
    assert tumor.object_type == "annotation"
    assert tumor.measurements == {}
    # The legacy "id" names the object type, so it is not kept as the object's id.
    assert tumor.properties == {"isLocked": False}


def test_histoqc_coordinates_unchanged(annotations_dir, shared_data) -> None:
    source = json.loads((annotations_dir / HISTOQC_QUPATH).read_text())
    source_ring = source[0]["geometry"]["coordinates"][0][0]

    tumor = read(annotations_dir, HISTOQC_QUPATH).objects[0]

    read_ring = list(tumor.geometry_level0.geoms[0].exterior.coords)
    assert read_ring == [(float(x), float(y)) for x, y in source_ring]
    assert (25952.91, 95133.6) in read_ring


def test_qupath_bare_multipolygon_holes(annotations_dir) -> None:
    (obj,) = read(annotations_dir, QUPATH_BARE_MULTIPOLYGON).objects

    geometry = obj.geometry_level0
    assert isinstance(geometry, MultiPolygon)
    assert [len(part.interiors) for part in geometry.geoms] == [26, 0, 0]
    ring_sizes = [
        len(ring.coords) for part in geometry.geoms for ring in [part.exterior, *part.interiors]
    ]
    assert sum(ring_sizes) == 1553
    assert geometry.geoms[0].interiors[0].coords[0] == (36.29, 8515.91)
    assert obj.class_name is None
    assert obj.object_type == "annotation"
    assert obj.properties == {}


def test_luna_cells_measurements_and_color(annotations_dir) -> None:
    first, second = read(annotations_dir, LUNA_CELLS).objects

    for cell in (first, second):
        assert cell.object_type == "cell"
        assert cell.class_name == "Other"
        assert cell.class_color_rgb == (0, 128, 128)
        assert len(cell.measurements) == 54
    assert first.measurements["Nucleus: Area µm^2"] == 6.382274627685547
    assert first.measurements["Hematoxylin: Nucleus: Median"] == 0.0
    assert second.measurements["Cell: Solidity"] == 1.0
    assert first.properties == {"id": "5868af7c-9aaf-4646-b618-e0a3cf74b94f"}
    # The cell outline is the geometry, not nucleusGeometry.
    assert first.geometry_level0.area == 262144.0
    assert second.geometry_level0.area == 131072.0


def test_luna_dsa_geojson_class_from_label(annotations_dir) -> None:
    annotations = read(annotations_dir, LUNA_DSA_GEOJSON)

    first = annotations.objects[0]
    assert first.class_name == "Other"
    assert first.class_color_rgb is None
    assert first.properties == {
        "annotation_girder_id": "621e5f13150bd39c9d7ae052",
        "element_girder_id": "82ddcc2295f1e64eab0d1a88",
        "group": "Other",
        "label": "Other",
    }
    assert first.geometry_level0.area == 3840841.5
    assert [obj.class_name for obj in annotations.objects[2:5]] == ["Tumor", "Tumor", "TILs"]


def test_asap_splines_and_group_color(annotations_dir) -> None:
    annotations = read(annotations_dir, ASAP_SPLINES)

    # Annotations 10 to 13 are the splines, read as polygons through their control points.
    spline = annotations.objects[10]
    assert spline.class_name == "tissue"
    assert len(spline.geometry_level0.exterior.coords) == 12 + 1
    assert spline.geometry_level0.exterior.coords[0] == (123703.273, 84241.3672)
    # The class colour is the group's colour, #64FE2E, not the annotation's #F4FA58.
    assert spline.class_color_rgb == (100, 254, 46)
    assert annotations.objects[0].properties == {"name": "Annotation 0", "asap_color": "#F4FA58"}


def test_asap_three_point_annotation(annotations_dir) -> None:
    annotations = read(annotations_dir, ASAP_CAMELYON)

    triangle = annotations.objects[6]
    assert len(triangle.geometry_level0.exterior.coords) == 4
    assert annotations.objects[0].geometry_level0.exterior.coords[0] == (27004.1191, 65481.0352)


def test_aperio_regions_repaired(annotations_dir) -> None:
    annotations = read(annotations_dir, APERIO)

    layers_and_regions = [
        (obj.properties["aperio_layer_id"], obj.properties["aperio_region_id"])
        for obj in annotations.objects
    ]
    assert layers_and_regions == [("1", "2"), ("1", "3"), ("3", "1"), ("4", "1")]
    first = annotations.objects[0]
    # The valid region keeps its 331 vertices exactly; only the other three are repaired.
    assert len(first.geometry_level0.exterior.coords) == 332
    assert first.geometry_level0.exterior.coords[0] == (40265.344427, 13434.053525)
    assert all(isinstance(obj.geometry_level0, Polygon) for obj in annotations.objects)
    assert first.properties["aperio_line_color"] == "65280"


def test_dsa_documents_rejected(annotations_dir) -> None:
    path = annotations_dir / DSA_DOCUMENTS

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    message = str(raised.value)
    assert str(path) in message
    assert "Digital Slide Archive" in message
    assert "ASAP XML" in message


@pytest.mark.parametrize("name", VOC_FILES)
def test_voc_boxes_rejected(annotations_dir, name) -> None:
    path = annotations_dir / name

    with pytest.raises(AnnotationFileError) as raised:
        read_annotation_file(path)

    message = str(raised.value)
    assert str(path) in message
    assert "Pascal VOC" in message
    assert "GeoJSON" in message


@pytest.mark.parametrize("name", READABLE_FILES)
def test_round_trip_keeps_everything(annotations_dir, tmp_path, name) -> None:
    original = read(annotations_dir, name)
    exported = tmp_path / "exported.geojson"

    written = write_qupath_geojson(original.objects, exported)
    reread = read_annotation_file(exported)

    assert written == len(original.objects)
    assert reread.skipped == ()
    assert reread.repaired == 0
    assert reread.class_counts == original.class_counts
    assert len(reread.objects) == len(original.objects)
    for before, after in zip(original.objects, reread.objects, strict=True):
        assert shapely.to_wkb(after.geometry_level0) == shapely.to_wkb(before.geometry_level0)
        assert after.class_name == before.class_name
        assert after.class_color_rgb == (before.class_color_rgb if before.class_name else None)
        assert after.object_type == before.object_type
        assert after.measurements == before.measurements


def test_round_trip_keeps_uuid_ids(annotations_dir, tmp_path) -> None:
    original = read(annotations_dir, LUNA_CELLS)
    exported = tmp_path / "cells.geojson"

    write_qupath_geojson(original.objects, exported)

    features = json.loads(exported.read_text(encoding="utf-8"))["features"]
    assert [feature["id"] for feature in features] == [
        "5868af7c-9aaf-4646-b618-e0a3cf74b94f",
        "e38fc918-edeb-462e-9d80-ed48ad582746",
    ]
    assert features[0]["properties"]["classification"] == {
        "name": "Other",
        "color": [0, 128, 128],
    }
    assert "nucleusGeometry" not in features[0]
