"""Bad QuPath GeoJSON files through the annotation import API and ``import_annotations``.

A file-level problem (not JSON, not GeoJSON, unmapped classes) rejects the whole file.
A bad object is skipped with its index and reason, and never aborts the file. When no
object remains, the API returns status 400 and the command exits with status 1. A rejected file
leaves no Instance, no history event and no audit row.
"""

from __future__ import annotations


import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from shapely.geometry import shape

from apps.annotations.models import Instance, InstanceEvent
from tests.bad_inputs import annotation_files
from tests.bad_inputs.conftest import (
    assert_no_annotation_written,
    assert_no_traceback,
    assert_unknown_classes_rejected,
    audited_actions,
    post_annotation_file,
    run_command,
)
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db

NAN_REASON = "NaN or infinite coordinate at position 1 of ring 0 of polygon 0"
TWO_POINTS_REASON = "degenerate: ring 0 of polygon 0 has fewer than 3 distinct points"
# Shapely calls a ring of collinear points invalid, and repairing it leaves no area.
ZERO_AREA_REASON = "degenerate: the outline is invalid and no area remains after repair"
SUPPORTED = "Supported formats are QuPath or other GeoJSON"


@pytest.fixture
def slide():
    width_px, height_px = annotation_files.SLIDE_SIZE_PX
    return create_slide_record("biopsy", width_px, height_px, mpp=0.5)


def _generate(case: str, shared_data, folder):
    generator = getattr(annotation_files, case)
    if case in ("not_json", "empty_collection"):
        return generator(folder)
    return generator(shared_data, folder)


# (generator, fragments of the message, which starts with "Annotation file <name> ").
UNREADABLE_FILES = [
    ("not_json", ["is neither JSON nor XML (it starts with b'Glomeruli were count')", SUPPORTED]),
    ("truncated_export", ["is not valid JSON: ", "The file may be truncated, so export it again."]),
    ("dsa_documents", [
        "is a JSON array without GeoJSON Features (it looks like a Digital Slide Archive "
        "annotation document, which is not supported: export the annotations from DSA as GeoJSON)",
    ]),
    ("features_not_array", [
        'is a GeoJSON FeatureCollection whose "features" is dict, expected an array.',
    ]),
]


@pytest.mark.parametrize(("case", "fragments"), UNREADABLE_FILES)
def test_api_rejects_unreadable_file(case, fragments, slide, client_for, shared_data, inputs_dir):
    path = _generate(case, shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"Annotation file {path.name} ")
    for fragment in fragments:
        assert fragment in detail
    assert_no_traceback(detail)
    assert_no_annotation_written()


@pytest.mark.parametrize(("case", "fragments"), UNREADABLE_FILES)
def test_command_rejects_unreadable_file(case, fragments, slide, shared_data, inputs_dir):
    path = _generate(case, shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"CommandError: Annotation file {path} ")
    for fragment in fragments:
        assert fragment in result.stderr
    assert_no_traceback(result.stderr)
    assert_no_annotation_written()


# (generator, skipped objects as the API lists them, the message's reason part).
NOTHING_IMPORTED = [
    ("nan_coordinates", [{"index": 0, "reason": NAN_REASON}],
     f"1 object skipped (object 0: {NAN_REASON})"),
    ("degenerate_polygons",
     [{"index": 0, "reason": TWO_POINTS_REASON}, {"index": 1, "reason": ZERO_AREA_REASON}],
     f"2 objects skipped (object 0: {TWO_POINTS_REASON}; object 1: {ZERO_AREA_REASON})"),
    ("outside_slide", [{"index": 0, "reason": "outside the slide"}],
     "1 object skipped (object 0: outside the slide)"),
    ("empty_collection", [], "the file contains no objects"),
]


@pytest.mark.parametrize(("case", "skipped", "reason"), NOTHING_IMPORTED)
def test_api_nothing_imported_is_400(
    case, skipped, reason, slide, client_for, shared_data, inputs_dir
):
    path = _generate(case, shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == f"Nothing from {path.name} was imported: {reason}."
    assert body["created"] == 0
    assert body["skipped"] == skipped
    assert body["outside_slide"] == (1 if case == "outside_slide" else 0)
    assert_no_annotation_written()


@pytest.mark.parametrize(("case", "skipped", "reason"), NOTHING_IMPORTED)
def test_command_nothing_imported_exits_1(case, skipped, reason, slide, shared_data, inputs_dir):
    path = _generate(case, shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stdout == f"imported 0 objects from {path.name} (geojson) onto slide {slide.pk}\n"
    skip_lines = [f"  not imported: object {s['index']}: {s['reason']}" for s in skipped]
    assert result.stderr.splitlines() == [
        *skip_lines, f"CommandError: Nothing from {path.name} was imported: {reason}."
    ]
    assert_no_annotation_written()


def test_nothing_imported_message_lists_three_reasons(slide, shared_data, inputs_dir):
    features = [
        annotation_files.qupath_feature(shared_data, annotation_files.OUTSIDE_SLIDE)
        for _ in range(5)
    ]
    path = annotation_files.write_collection(inputs_dir, "five_outside.geojson", features)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "CommandError: Nothing from five_outside.geojson was imported: 5 objects skipped "
        "(object 0: outside the slide; object 1: outside the slide; object 2: outside the "
        "slide; 2 more)."
    )


def test_api_unknown_classes_listed_with_counts(slide, client_for, shared_data, inputs_dir):
    path = annotation_files.unknown_classes(shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert_unknown_classes_rejected(response, "unknown_classes.geojson")


def test_command_unknown_classes_suggest_map(slide, shared_data, inputs_dir):
    path = annotation_files.unknown_classes(shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert "unknown class names 'Tumor' (2), 'Stroma' (1)" in result.stderr
    assert "Use --map 'NAME=CLASS' for each, or --map 'NAME=' to leave them out." in result.stderr
    assert_no_annotation_written()


def test_all_left_out_by_mapping_is_400(slide, client_for, shared_data, inputs_dir):
    path = annotation_files.unknown_classes(shared_data, inputs_dir)

    response = post_annotation_file(
        client_for("admin"), slide, path, mapping={"Tumor": "", "Stroma": ""}
    )

    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == (
        "Nothing from unknown_classes.geojson was imported: 3 objects left out by the mapping."
    )
    assert body["left_out_by_mapping"] == {"Stroma": 1, "Tumor": 2}
    assert_no_annotation_written()


@pytest.mark.parametrize(("mapping", "message"), [
    ("{Tumor: ''}", "mapping is not valid JSON: Expecting property name enclosed in double quotes"),
    ('{"Tumor": 3}', 'mapping must be a JSON object of names, e.g. {"Glom": "glomerulus"}.'),
    ('["Tumor"]', 'mapping must be a JSON object of names, e.g. {"Glom": "glomerulus"}.'),
    ('{"Tumor": "tumour"}',
     "The mapping sends 'Tumor' to 'tumour', which is not a configured class"),
])
def test_api_rejects_bad_mapping(mapping, message, slide, client_for, shared_data, inputs_dir):
    path = annotation_files.unknown_classes(shared_data, inputs_dir)
    upload = SimpleUploadedFile(path.name, path.read_bytes())

    response = client_for("admin").post(
        f"/api/slides/{slide.pk}/annotation-imports/", {"file": upload, "mapping": mapping}
    )

    assert response.status_code == 400
    assert response.json()["detail"].startswith(message)
    assert_no_annotation_written()


def test_bow_tie_is_repaired_and_counted(slide, client_for, shared_data, inputs_dir):
    path = annotation_files.bow_tie(shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["created"], body["repaired"], body["skipped"]) == (1, 1, [])
    geometry = shape(Instance.objects.get().geometry)
    assert geometry.is_valid
    assert geometry.geom_type == "MultiPolygon"
    assert len(geometry.geoms) == 2
    # Two triangles, each 200 px high with its apex 100 px from the base.
    assert geometry.area == pytest.approx(20_000.0)


def test_command_reports_repaired_bow_tie(slide, shared_data, inputs_dir):
    path = annotation_files.bow_tie(shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 0
    assert "  repaired (self-intersecting): 1" in result.stdout.splitlines()


def test_api_mixed_file_skips_only_bad(slide, client_for, shared_data, inputs_dir):
    path = annotation_files.mixed_one_bad(shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == annotation_files.MIXED_GOOD_COUNT
    assert body["created_per_class"] == {"glomerulus": 2, "vessel": 2}
    assert body["skipped"] == [{
        "index": annotation_files.MIXED_BAD_INDEX,
        "reason": "NaN or infinite coordinate at position 2 of ring 0 of polygon 0",
    }]
    assert Instance.objects.count() == annotation_files.MIXED_GOOD_COUNT
    assert InstanceEvent.objects.count() == annotation_files.MIXED_GOOD_COUNT
    assert audited_actions() == ["import"]


def test_command_mixed_file_reports_bad_object(slide, shared_data, inputs_dir):
    path = annotation_files.mixed_one_bad(shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"imported 4 objects from mixed.geojson (geojson) onto slide {slide.pk}",
        "  glomerulus: 2",
        "  vessel: 2",
    ]
    assert result.stderr == (
        "  not imported: object 2: NaN or infinite coordinate at position 2 of ring 0 of "
        "polygon 0\n"
    )
    assert Instance.objects.count() == annotation_files.MIXED_GOOD_COUNT


def test_command_missing_slide_and_file(slide, inputs_dir):
    absent = inputs_dir / "absent.geojson"

    missing_slide = run_command("import_annotations", str(slide.pk + 1000), str(absent))
    missing_file = run_command("import_annotations", str(slide.pk), str(absent))

    assert missing_slide.exit_code == 1
    assert missing_slide.stderr == f"CommandError: Slide {slide.pk + 1000} does not exist.\n"
    assert missing_file.exit_code == 1
    assert missing_file.stderr.startswith(
        f"CommandError: Annotation file {absent} cannot be read (No such file"
    )
    assert_no_annotation_written()
