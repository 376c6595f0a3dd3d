"""Annotation files onto slides: class mapping, counts, clipping, the command line, the
upload API, and import -> export -> import keeping every object, class and hole."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from shapely.geometry import shape

from apps.annotations.models import Instance, InstanceEvent
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_slide():
    """A slide record large enough for the coordinates of the real annotation files."""
    return create_slide_record("big", 200_000, 200_000, mpp=0.25)


@pytest.fixture
def annotations_dir(shared_data):
    return shared_data / "annotations"


def test_unknown_classes_stop_import_with_counts(big_slide, annotations_dir):
    path = annotations_dir / "qupath_geojson" / "histoqc_qupath02_multipolygon_tumor_invborder.json"
    with pytest.raises(CommandError) as raised:
        call_command("import_annotations", str(big_slide.pk), str(path))
    message = str(raised.value)
    assert "'Tumor' (1)" in message
    assert "'Invborder' (1)" in message
    assert "Nothing was imported" in message
    assert Instance.objects.count() == 0


def test_mapping_imports_multipolygons_with_holes(big_slide, annotations_dir, capsys):
    path = annotations_dir / "qupath_geojson" / "histoqc_qupath02_multipolygon_tumor_invborder.json"
    call_command("import_annotations", str(big_slide.pk), str(path),
                 "--map", "Tumor=", "--map", "Invborder=glomerulus")
    out = capsys.readouterr().out
    assert "imported 1 objects" in out
    assert "glomerulus: 1" in out
    assert "left out by mapping: Tumor: 1" in out
    row = Instance.objects.get()
    geometry = shape(row.geometry)
    assert (row.class_name, row.review_state, row.source) == ("glomerulus", "accepted", "imported")
    assert geometry.geom_type == "MultiPolygon"
    assert len(geometry.geoms) == 5
    assert _holes(row.geometry) == 1
    assert InstanceEvent.objects.get().action == "import"


def test_unclassified_bare_multipolygon_becomes_pending(big_slide, annotations_dir):
    path = annotations_dir / "qupath_geojson" / "qupath_core_test_polygon_bare_multipolygon.geojson"
    call_command("import_annotations", str(big_slide.pk), str(path))
    row = Instance.objects.get()
    assert (row.class_name, row.review_state) == ("", "pending")
    geometry = shape(row.geometry)
    polygons = getattr(geometry, "geoms", [geometry])
    assert len(polygons[0].interiors) == 26


def test_objects_outside_slide_are_reported(annotations_dir, capsys):
    small = create_slide_record("small", 100, 100, mpp=0.25)
    path = annotations_dir / "asap_xml" / "pathmltut_camelyon16_normal_004_tissue.xml"
    with pytest.raises(CommandError) as raised:
        call_command("import_annotations", str(small.pk), str(path), "--map", "tissue=background",
                     "--map", "trash=")
    assert raised.value.returncode == 1
    assert "Nothing from pathmltut_camelyon16_normal_004_tissue.xml was imported" in str(raised.value)
    captured = capsys.readouterr()
    assert "imported 0 objects" in captured.out
    assert "outside the slide" in captured.err
    assert Instance.objects.count() == 0


def test_not_an_annotation_file(big_slide, tmp_path):
    path = tmp_path / "notes.geojson"
    path.write_text("this is not json")
    with pytest.raises(CommandError) as raised:
        call_command("import_annotations", str(big_slide.pk), str(path))
    assert "notes.geojson" in str(raised.value)
    assert Instance.objects.count() == 0


def test_round_trip_keeps_objects_classes_holes(big_slide, annotations_dir, tmp_path):
    source = annotations_dir / "qupath_geojson" / "histoqc_qupath02_multipolygon_tumor_invborder.json"
    call_command("import_annotations", str(big_slide.pk), str(source),
                 "--map", "Tumor=glomerulus", "--map", "Invborder=vessel")
    first = {(r.class_name, round(shape(r.geometry).area, 1), _holes(r.geometry))
             for r in Instance.objects.filter(slide=big_slide)}
    exported = tmp_path / "out.geojson"
    call_command("export_annotations", str(big_slide.pk), "-o", str(exported))
    json.loads(exported.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    again = create_slide_record("again", 200_000, 200_000, mpp=0.25)
    call_command("import_annotations", str(again.pk), str(exported))
    second = {(r.class_name, round(shape(r.geometry).area, 1), _holes(r.geometry))
              for r in Instance.objects.filter(slide=again)}
    assert len(first) == 2
    assert second == first


def _holes(geometry: dict) -> int:
    shaped = shape(geometry)
    return sum(len(p.interiors) for p in getattr(shaped, "geoms", [shaped]))


def test_upload_api_reports_unknown_then_maps(big_slide, client_for, annotations_dir):
    client = client_for("admin")
    content = (annotations_dir / "qupath_geojson" / "luna_test_cell_detections_SEMISYNTHETIC.geojson").read_bytes()
    first = client.post(f"/api/slides/{big_slide.pk}/annotation-imports/",
                        {"file": SimpleUploadedFile("cells.geojson", content)})
    assert first.status_code == 400
    body = first.json()
    assert body["unknown_classes"] == {"Other": 2}
    assert "glomerulus" in body["known_classes"]
    mapping = {"Other": "distal tubule"}
    second = client.post(f"/api/slides/{big_slide.pk}/annotation-imports/",
                         {"file": SimpleUploadedFile("cells.geojson", content),
                          "mapping": json.dumps(mapping)})
    assert second.status_code == 201, second.content
    report = second.json()
    assert report["created"] == 2
    assert report["created_per_class"] == {"distal tubule": 2}
    assert set(Instance.objects.values_list("class_name", flat=True)) == {"distal tubule"}


def test_mapping_to_unconfigured_class_named(big_slide, annotations_dir):
    path = annotations_dir / "qupath_geojson" / "luna_test_cell_detections_SEMISYNTHETIC.geojson"
    with pytest.raises(CommandError) as raised:
        call_command("import_annotations", str(big_slide.pk), str(path), "--map", "Other=tumour")
    assert "sends 'Other' to 'tumour', which is not a configured class" in str(raised.value)
    assert Instance.objects.count() == 0
