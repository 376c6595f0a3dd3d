"""Bad ASAP and ImageScope XML files through the annotation import API and ``import_annotations``.

The rules are those of the GeoJSON files: a file-level problem rejects the whole file, a
bad object is skipped with its index and reason, and a rejected file leaves no Instance,
no history event and no audit row. An XML entity is rejected where it is declared, before
anything is expanded or read.
"""

from __future__ import annotations

import tracemalloc

import pytest
from shapely.geometry import shape

from apps.annotations.models import Instance, InstanceEvent
from ml.annotation_files import read_annotation_file
from tests.bad_inputs import annotation_files, xml_files
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

SUPPORTED = "Supported formats are QuPath or other GeoJSON"
SQUARE = [tuple(point) for point in annotation_files.GOOD_SQUARE[:-1]]
ENTITY_REJECTED = (
    "which is rejected because entities can expand to gigabytes or read other files. ASAP "
    "and Aperio ImageScope never write entities, so export the annotations again from the "
    "annotation tool."
)
# Text of the file that the external entity names. No response or message may contain it.
SECRET_TEXT = "secret-text-of-a-local-file"


@pytest.fixture
def slide():
    width_px, height_px = annotation_files.SLIDE_SIZE_PX
    return create_slide_record("biopsy", width_px, height_px, mpp=0.5)


def _with_vertex(ring, position, vertex):
    """Return ``ring`` with the vertex at ``position`` replaced."""
    changed = list(ring)
    changed[position] = vertex
    return changed


# --- Files rejected whole -----------------------------------------------------------------


def _unreadable(case, shared_data, folder, tmp_path):
    """Write one unreadable file and return its path and fragments of the expected message."""
    if case in ("truncated_asap", "truncated_aperio"):
        path = xml_files.truncated_export(case.split("_")[1], shared_data, folder)
        return path, ["is not well-formed XML (", "The file may be truncated, so export it again."]
    if case == "renamed_root":
        return xml_files.renamed_root(shared_data, folder), [
            "is XML with root element <ASAPAnnotations>, expected <ASAP_Annotations> (ASAP) "
            "or <Annotations> (Aperio ImageScope).", SUPPORTED,
        ]
    if case == "voc_boxes":
        return xml_files.voc_boxes(shared_data, folder), [
            "is Pascal VOC XML with bounding boxes, which cannot be imported", SUPPORTED,
        ]
    if case == "png_named_xml":
        return xml_files.png_named_xml(shared_data, folder), [
            "is neither JSON nor XML (it starts with b'\\x89PNG\\r\\n\\x1a\\n", SUPPORTED,
        ]
    if case == "empty_file":
        return xml_files.empty_file(folder), [
            "is empty. Export the annotations again; supported formats are QuPath",
        ]
    if case == "declaration_only":
        return xml_files.declaration_only(folder), [
            "is not well-formed XML (no element found: line 2, column 0)",
        ]
    if case == "external_entity":
        secret = tmp_path / "secret.txt"
        secret.write_text(SECRET_TEXT, encoding="utf-8")
        return xml_files.external_entity(folder, secret), [
            "declares the XML entity 'secret', " + ENTITY_REJECTED,
        ]
    if case == "billion_laughs":
        return xml_files.billion_laughs(folder), [
            "declares the XML entity 'lol0', " + ENTITY_REJECTED,
        ]
    raise AssertionError(f"unknown case {case}")


UNREADABLE_CASES = [
    "truncated_asap", "truncated_aperio", "renamed_root", "voc_boxes", "png_named_xml",
    "empty_file", "declaration_only", "external_entity", "billion_laughs",
]


@pytest.mark.parametrize("case", UNREADABLE_CASES)
def test_api_rejects_unreadable_xml(case, slide, client_for, shared_data, inputs_dir, tmp_path):
    path, fragments = _unreadable(case, shared_data, inputs_dir, tmp_path)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(f"Annotation file {path.name} ")
    for fragment in fragments:
        assert fragment in detail
    assert_no_traceback(detail)
    assert SECRET_TEXT not in response.content.decode()
    assert_no_annotation_written()


@pytest.mark.parametrize("case", UNREADABLE_CASES)
def test_command_rejects_unreadable_xml(case, slide, shared_data, inputs_dir, tmp_path):
    path, fragments = _unreadable(case, shared_data, inputs_dir, tmp_path)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"CommandError: Annotation file {path} ")
    assert len(result.stderr.splitlines()) == 1
    for fragment in fragments:
        assert fragment in result.stderr
    assert_no_traceback(result.stderr)
    assert SECRET_TEXT not in result.stderr
    assert_no_annotation_written()


def test_billion_laughs_rejected_unexpanded(inputs_dir):
    path = xml_files.billion_laughs(inputs_dir)

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="declares the XML entity 'lol0'"):
            read_annotation_file(path)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Expanding the last entity would take 3 GB, but the rejected parse stays below 10 MB.
    assert peak_bytes < 10 * 2**20


# --- Bad objects: skipped with a reason ------------------------------------------------------


def _bad_objects(kind):
    """Return (name, objects, expected skip reason) for files whose only object is bad."""
    element = xml_files.VERTEX_ELEMENT[kind]
    return [
        ("non_numeric", [(_with_vertex(SQUARE, 1, ("abc", 100)), "Glomerulus")],
         f"non-numeric coordinate 'abc' at {element} 1"),
        ("comma_decimal", [(_with_vertex(SQUARE, 2, ("300,5", 300)), "Glomerulus")],
         f"non-numeric coordinate '300,5' at {element} 2"),
        ("missing_y", [(_with_vertex(SQUARE, 1, (300, None)), "Glomerulus")],
         f"missing Y attribute at {element} 1"),
        ("nan", [(_with_vertex(SQUARE, 1, ("NaN", 100)), "Glomerulus")],
         f"NaN or infinite coordinate at {element} 1"),
        ("overflow", [(_with_vertex(SQUARE, 3, (100, "1e999")), "Glomerulus")],
         f"NaN or infinite coordinate at {element} 3"),
        ("huge", [(_with_vertex(SQUARE, 0, ("5e9", 100)), "Glomerulus")],
         f"coordinate 5000000000.0 at {element} 0 is outside +-1e+09 level-0 pixels"),
        ("two_vertices", [([(500, 500), (600, 600)], "Glomerulus")],
         "degenerate: ring 0 of polygon 0 has fewer than 3 distinct points"),
        ("no_vertices", [([], "Glomerulus")],
         "degenerate: ring 0 of polygon 0 has fewer than 3 distinct points"),
        ("outside", [([tuple(p) for p in annotation_files.OUTSIDE_SLIDE], "Glomerulus")],
         "outside the slide"),
    ]


BAD_OBJECT_CASES = [
    (kind, name) for kind in xml_files.KINDS for name, _, _ in _bad_objects("asap")
]


def _write_bad_object(kind, name, shared_data, folder):
    objects, reason = next((o, r) for n, o, r in _bad_objects(kind) if n == name)
    path = xml_files.write_objects(kind, shared_data, folder, f"{name}_{kind}.xml", objects)
    return path, reason


@pytest.mark.parametrize(("kind", "name"), BAD_OBJECT_CASES)
def test_api_bad_only_object_is_400(kind, name, slide, client_for, shared_data, inputs_dir):
    path, reason = _write_bad_object(kind, name, shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 400
    body = response.json()
    assert body["detail"] == (
        f"Nothing from {path.name} was imported: 1 object skipped (object 0: {reason})."
    )
    assert body["format"] == xml_files.FORMAT_NAME[kind]
    assert body["skipped"] == [{"index": 0, "reason": reason}]
    assert body["created"] == 0
    assert_no_annotation_written()


@pytest.mark.parametrize(("kind", "name"), BAD_OBJECT_CASES)
def test_command_bad_only_object_exits_1(kind, name, slide, shared_data, inputs_dir):
    path, reason = _write_bad_object(kind, name, shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stdout == (
        f"imported 0 objects from {path.name} ({xml_files.FORMAT_NAME[kind]}) onto slide "
        f"{slide.pk}\n"
    )
    assert result.stderr.splitlines() == [
        f"  not imported: object 0: {reason}",
        f"CommandError: Nothing from {path.name} was imported: 1 object skipped "
        f"(object 0: {reason}).",
    ]
    assert_no_annotation_written()


MIXED_BAD_INDEX = 2
MIXED_GOOD_COUNT = 4


def _mixed_objects():
    """Four good squares 400 px apart, glomeruli and vessels, with a NaN square at index 2."""
    objects = []
    for index in range(MIXED_GOOD_COUNT):
        ring = [(x + 400 * index, y) for x, y in SQUARE]
        objects.append((ring, ("Glomerulus", "Vessel")[index % 2]))
    objects.insert(MIXED_BAD_INDEX, (_with_vertex(SQUARE, 2, ("NaN", 300)), "Glomerulus"))
    return objects


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_api_one_bad_region_never_aborts(kind, slide, client_for, shared_data, inputs_dir):
    path = xml_files.write_objects(kind, shared_data, inputs_dir, "mixed.xml", _mixed_objects())
    element = xml_files.VERTEX_ELEMENT[kind]

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == MIXED_GOOD_COUNT
    assert body["created_per_class"] == {"glomerulus": 2, "vessel": 2}
    assert body["skipped"] == [{
        "index": MIXED_BAD_INDEX, "reason": f"NaN or infinite coordinate at {element} 2",
    }]
    assert Instance.objects.count() == MIXED_GOOD_COUNT
    assert InstanceEvent.objects.count() == MIXED_GOOD_COUNT
    assert audited_actions() == ["import"]
    areas = sorted(shape(instance.geometry).area for instance in Instance.objects.all())
    assert areas == [40_000.0] * MIXED_GOOD_COUNT


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_command_one_bad_region_reported(kind, slide, shared_data, inputs_dir):
    path = xml_files.write_objects(kind, shared_data, inputs_dir, "mixed.xml", _mixed_objects())
    element = xml_files.VERTEX_ELEMENT[kind]

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"imported 4 objects from mixed.xml ({xml_files.FORMAT_NAME[kind]}) onto slide "
        f"{slide.pk}",
        "  glomerulus: 2",
        "  vessel: 2",
    ]
    assert result.stderr == f"  not imported: object 2: NaN or infinite coordinate at {element} 2\n"
    assert Instance.objects.count() == MIXED_GOOD_COUNT


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_self_intersecting_region_repaired(kind, slide, client_for, shared_data, inputs_dir):
    bow_tie = [tuple(point) for point in annotation_files.BOW_TIE[:-1]]
    path = xml_files.write_objects(
        kind, shared_data, inputs_dir, "bow_tie.xml", [(bow_tie, "Glomerulus")]
    )

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["created"], body["repaired"], body["skipped"]) == (1, 1, [])
    geometry = shape(Instance.objects.get().geometry)
    assert geometry.is_valid
    assert geometry.geom_type == "MultiPolygon"
    assert geometry.area == pytest.approx(20_000.0)


def _unknown_class_file(kind, shared_data, folder):
    objects = [(SQUARE, "Tumor"), (SQUARE, "Tumor"), (SQUARE, "Stroma")]
    return xml_files.write_objects(kind, shared_data, folder, "unknown_classes.xml", objects)


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_api_unknown_group_names_listed(kind, slide, client_for, shared_data, inputs_dir):
    path = _unknown_class_file(kind, shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert_unknown_classes_rejected(response, "unknown_classes.xml")


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_command_unknown_group_names_suggest_map(kind, slide, shared_data, inputs_dir):
    path = _unknown_class_file(kind, shared_data, inputs_dir)

    result = run_command("import_annotations", str(slide.pk), str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        "CommandError: unknown_classes.xml: unknown class names 'Tumor' (2), 'Stroma' (1). "
        "Map each name to a class ("
    )
    assert result.stderr.endswith(
        "Nothing was imported. Use --map 'NAME=CLASS' for each, or --map 'NAME=' to leave "
        "them out.\n"
    )
    assert_no_annotation_written()


@pytest.mark.parametrize("kind", xml_files.KINDS)
def test_command_map_imports_unknown_groups(kind, slide, shared_data, inputs_dir):
    path = _unknown_class_file(kind, shared_data, inputs_dir)

    result = run_command(
        "import_annotations", str(slide.pk), str(path), "--map", "Tumor=glomerulus",
        "--map", "Stroma=",
    )

    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:] == [
        "  glomerulus: 2", "  left out by mapping: Stroma: 1",
    ]
    assert Instance.objects.filter(class_name="glomerulus").count() == 2


def test_point_annotation_skipped(slide, client_for, shared_data, inputs_dir):
    path = xml_files.point_annotation(shared_data, inputs_dir)

    response = post_annotation_file(client_for("admin"), slide, path)

    assert response.status_code == 400
    assert response.json()["skipped"] == [
        {"index": 0, "reason": "ASAP Dot is a point annotation, not an area"}
    ]
    assert_no_annotation_written()
