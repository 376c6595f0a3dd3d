"""Bad slide files through the upload API (POST /api/slides/) and ``import_slides``.

A rejected file leaves no Slide row, no audit row and no file under MEDIA_ROOT/slides.
Files that are odd but usable (glass only, smaller than a tile, transparent borders) are
imported, and the glass-only slide carries a warning.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from shapely.geometry import shape

from apps.slides.models import Slide
from tests.bad_inputs import slide_files
from tests.bad_inputs.conftest import (
    assert_no_traceback,
    audited_actions,
    files_under,
    run_command,
)

pytestmark = pytest.mark.django_db

NO_TISSUE_WARNING = "No tissue was found on this slide, so SAM proposals will skip every tile."
UNREADABLE = "OpenSlide cannot read this file"
TRUNCATED_HINT = "It may be truncated, corrupt or a variant OpenSlide does not support."
TOO_LARGE = "is too large to decode into memory, which allows at most 67,108,864 px"


def _generate(case: str, shared_data, folder):
    generator = getattr(slide_files, case)
    if case in ("truncated_svs", "corrupt_tiles_svs"):
        return generator(shared_data, folder)
    return generator(folder)


def _upload(client, path, **fields):
    upload = SimpleUploadedFile(path.name, path.read_bytes())
    return client.post("/api/slides/", {"file": upload, **fields})


# (generator, fragments of the upload API's message after the file name).
REJECTED_UPLOADS = [
    ("truncated_svs", [UNREADABLE, TRUNCATED_HINT]),
    ("corrupt_tiles_svs", [
        "OpenSlide failed to read level 0 at (0, 0)",
        "The file may be truncated or corrupt, so re-export or re-copy it.",
    ]),
    ("png_named_svs", [UNREADABLE, TRUNCATED_HINT]),
    ("text_named_tiff", [UNREADABLE, "cannot identify image file"]),
    ("text_file", ["file type .txt is not accepted", "upload one of .bif, .dcm"]),
    ("junk_czi", ["file type .czi is not accepted", "import_slides PATH"]),
    ("tiff_without_mpp", [
        "has no pixel size (mpp) in its properties or TIFF resolution tags",
        "'Microns per pixel' in the upload form",
    ]),
    ("decompression_bomb_png", [TOO_LARGE, "Convert it to a tiled pyramidal TIFF"]),
]


@pytest.mark.parametrize(("case", "fragments"), REJECTED_UPLOADS)
def test_upload_rejects_bad_slide(case, fragments, client_for, shared_data, inputs_dir, media_root):
    path = _generate(case, shared_data, inputs_dir)

    response = _upload(client_for("admin"), path)

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith(path.name)
    for fragment in fragments:
        assert fragment in detail
    assert str(media_root) not in detail
    assert_no_traceback(detail)
    assert Slide.objects.count() == 0
    assert audited_actions() == []
    assert files_under(media_root) == []


# (generator, fragments of import_slides's "rejected" line after the path).
REJECTED_IMPORTS = [
    ("truncated_svs", [UNREADABLE, TRUNCATED_HINT]),
    ("corrupt_tiles_svs", ["OpenSlide failed to read level 0 at (0, 0)"]),
    ("png_named_svs", [UNREADABLE]),
    ("text_named_tiff", [UNREADABLE, "cannot identify image file"]),
    ("text_file", [UNREADABLE, TRUNCATED_HINT]),
    ("junk_czi", [UNREADABLE]),
    ("tiff_without_mpp", ["has no pixel size (mpp)", "--mpp on the command line"]),
    ("decompression_bomb_png", [TOO_LARGE]),
]


@pytest.mark.parametrize(("case", "fragments"), REJECTED_IMPORTS)
def test_import_command_rejects_bad_slide(case, fragments, shared_data, inputs_dir):
    path = _generate(case, shared_data, inputs_dir)

    result = run_command("import_slides", str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    rejected_line, summary_line = result.stderr.splitlines()
    assert rejected_line.startswith(f"rejected: {path}") or rejected_line.startswith(
        f"rejected {path}: "
    )
    for fragment in fragments:
        assert fragment in rejected_line
    assert summary_line == "CommandError: 1 of 1 slides were rejected."
    assert_no_traceback(result.stderr)
    assert Slide.objects.count() == 0


def test_import_command_keeps_good_slide_beside_bad(shared_data, inputs_dir):
    bad = slide_files.truncated_svs(shared_data, inputs_dir)
    good = shared_data / slide_files.REAL_SVS

    result = run_command("import_slides", str(bad), str(good))

    assert result.exit_code == 1
    assert f"imported {good}: slide " in result.stdout
    rejected_lines = [line for line in result.stderr.splitlines() if line.startswith("rejected")]
    assert len(rejected_lines) == 1
    assert str(bad) in rejected_lines[0]
    assert Slide.objects.get().file_path == str(good.resolve())


def test_no_mpp_slide_imports_with_given_mpp(client_for, inputs_dir, media_root):
    path = slide_files.tiff_without_mpp(inputs_dir)

    response = _upload(client_for("admin"), path, mpp="0.5")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["width_px"], body["height_px"]) == (1024, 768)
    assert (body["mpp"], body["mpp_source"]) == (0.5, "given")


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("mpp", "abc", "A valid number is required."),
    ("mpp", "-0.5", "Ensure this value is greater than or equal to 0.01."),
    ("mpp", "nan", "mpp must be a positive number of microns per pixel, got nan."),
    ("section", "-1", "Ensure this value is greater than or equal to 0."),
    ("section", "two", "A valid integer is required."),
    ("report_ifta_pct", "150", "Ensure this value is less than or equal to 100.0."),
])
def test_upload_rejects_bad_field(field, value, fragment, client_for, inputs_dir, media_root):
    path = slide_files.tiff_without_mpp(inputs_dir)

    response = _upload(client_for("admin"), path, **{field: value})

    assert response.status_code == 400
    assert fragment in response.content.decode()
    assert Slide.objects.count() == 0
    assert files_under(media_root) == []


@pytest.mark.parametrize(("option", "value", "fragment"), [
    ("--mpp", "-0.5", "mpp must be a positive number of microns per pixel, got -0.5."),
    ("--section", "-2", "section must be a whole number from 0 to 2147483647, got -2."),
    ("--report-ifta", "150", "report_ifta_pct must lie between 0 and 100, got 150.0."),
])
def test_import_command_rejects_bad_option(option, value, fragment, inputs_dir):
    path = slide_files.tiff_without_mpp(inputs_dir)

    result = run_command("import_slides", str(path), option, value)

    assert result.exit_code == 1
    assert fragment in result.stderr
    assert Slide.objects.count() == 0


def test_glass_slide_imported_with_warning(client_for, inputs_dir, media_root):
    path = slide_files.blank_tiff(inputs_dir)

    response = _upload(client_for("admin"), path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tissue_area_um2"] == 0.0
    assert len(body["warnings"]) == 1
    assert body["warnings"][0].startswith(NO_TISSUE_WARNING)


def test_glass_slide_command_prints_warning(inputs_dir):
    path = slide_files.blank_tiff(inputs_dir)

    result = run_command("import_slides", str(path))

    assert result.exit_code == 0
    assert f"imported {path}: slide " in result.stdout
    assert result.stderr.startswith(f"warning {path}: {NO_TISSUE_WARNING}")


def test_small_slide_imported_with_tissue(client_for, inputs_dir, media_root):
    path = slide_files.small_tiff(inputs_dir)

    response = _upload(client_for("admin"), path)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["width_px"], body["height_px"]) == (100, 100)
    assert body["mpp"] == slide_files.SMALL_SLIDE_MPP
    assert body["warnings"] == []
    assert body["tissue_area_um2"] > 0


def test_transparent_border_is_not_tissue(client_for, inputs_dir, media_root):
    path = slide_files.rgba_transparent_border_tiff(inputs_dir)

    response = _upload(client_for("admin"), path)

    assert response.status_code == 201, response.content
    slide = Slide.objects.get(pk=response.json()["id"])
    tissue = shape(slide.tissue_geojson)
    assert tissue.bounds == slide_files.RGBA_OPAQUE_BOX
    x_min, _, x_max, _ = slide_files.RGBA_OPAQUE_BOX
    side_um = (x_max - x_min) * slide_files.RGBA_MPP
    assert slide.tissue_area_um2 == pytest.approx(side_um**2, rel=1e-3)
    assert slide.warnings == []
