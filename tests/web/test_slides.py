"""Slide import (command and upload API), tiles, thumbnails and who may use them."""

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from apps.slides.models import Slide

pytestmark = pytest.mark.django_db


def test_import_command_imports_svs_with_exact_metadata(shared_data, capsys):
    path = shared_data / "wsi" / "cmu-1-small-region.svs"
    call_command("import_slides", str(path), "--cohort", "KTX-2024", "--patient", "P-7",
                 "--section", "2", "--report-ifta", "15")
    slide = Slide.objects.get()
    assert (slide.width_px, slide.height_px) == (2220, 2967)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.mpp_source == "slide properties"
    assert slide.vendor == "aperio"
    assert (slide.patient_id, slide.section, slide.report_ifta_pct) == ("P-7", 2, 15.0)
    assert slide.cohort == "KTX-2024"
    assert slide.tissue_geojson["type"] in ("Polygon", "MultiPolygon")
    assert 0 < slide.tissue_area_um2 < 2220 * 2967 * 0.499**2
    assert f"slide {slide.pk}, 2220x2967 px" in capsys.readouterr().out


def test_import_command_reports_each_rejection(shared_data, capsys):
    good = shared_data / "wsi" / "cmu-1-small-region.svs"
    dicom = shared_data / "wsi" / "pathml_small_dicom_TCGA-XK-AAJU.dcm"
    bogus_mpp = shared_data / "wsi" / "pathml_small_HE_levels_SYNTHETIC.tiff"
    with pytest.raises(CommandError) as raised:
        call_command("import_slides", str(good), str(dicom), str(bogus_mpp))
    assert raised.value.returncode == 1
    assert "2 of 3 slides were rejected" in str(raised.value)
    err = capsys.readouterr().err
    rejected_lines = [line for line in err.splitlines() if line.startswith("rejected")]
    assert len(rejected_lines) == 2
    assert str(dicom) in rejected_lines[0]
    assert str(bogus_mpp) in rejected_lines[1]
    assert "--mpp" in err
    assert Slide.objects.count() == 1


def test_import_command_takes_given_mpp(shared_data):
    path = shared_data / "wsi" / "pathml_small_HE_levels_SYNTHETIC.tiff"
    call_command("import_slides", str(path), "--mpp", "0.5")
    slide = Slide.objects.get()
    assert (slide.width_px, slide.height_px, slide.mpp, slide.mpp_source) == (300, 250, 0.5, "given")


def _png_bytes(width=64, height=48, colour=(200, 120, 160)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client, name, content, **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/api/slides/", {"file": SimpleUploadedFile(name, content), **fields}, format="multipart"
    )


def test_upload_svs_creates_slide_under_generated_path(client_for, shared_data, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    client = client_for("admin")
    content = (shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()
    response = _upload(client, "../../etc/cmu 1.svs", content, patient_id="P1", section=1,
                       cohort="KTX-2024")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["width_px"], body["height_px"], body["patient_id"]) == (2220, 2967, "P1")
    assert body["cohort"] == "KTX-2024"
    assert "<td>KTX-2024</td>" in client.get("/").content.decode()
    slide = Slide.objects.get(pk=body["id"])
    assert slide.original_filename == "cmu 1.svs"
    assert slide.file_path.startswith(str(tmp_path / "slides"))
    assert slide.file_path.endswith("cmu_1.svs")


def test_upload_rejects_png_without_mpp(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "tile.png", _png_bytes())
    assert response.status_code == 400
    assert "mpp" in response.json()["detail"]
    assert Slide.objects.count() == 0
    assert list((tmp_path / "slides").iterdir()) == []


def test_upload_png_with_mpp(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "tile.png", _png_bytes(), mpp="0.5")
    assert response.status_code == 201, response.content
    assert (response.json()["width_px"], response.json()["mpp_source"]) == (64, "given")


def test_upload_rejects_text_with_slide_suffix(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "notes.svs", b"not a slide at all\n" * 100)
    assert response.status_code == 400
    assert "notes" in response.json()["detail"]
    assert Slide.objects.count() == 0


def test_upload_rejects_unknown_suffix(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "slide.exe", b"MZ")
    assert response.status_code == 400
    assert ".exe is not accepted" in response.json()["detail"]


def test_upload_rejects_file_over_limit(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.NEPHROWEB_MAX_UPLOAD_MB = 1
    response = _upload(client_for("admin"), "big.png", b"\0" * (2 * 1024 * 1024), mpp="0.5")
    assert response.status_code == 400
    assert "exceeds the" in response.json()["detail"]
    assert Slide.objects.count() == 0


def test_upload_rejects_out_of_range_report(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "tile.png", _png_bytes(), mpp="0.5",
                       report_ifta_pct="140")
    assert response.status_code == 400
    assert "report_ifta_pct" in response.json()


@pytest.mark.parametrize("role, status", [(None, 403), ("annotator", 403), ("pathologist", 403)])
def test_upload_needs_admin_role(client_for, role, status):
    response = _upload(client_for(role), "tile.png", _png_bytes(), mpp="0.5")
    assert response.status_code == status
    assert Slide.objects.count() == 0


def test_anonymous_gets_nothing(client, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    assert client.get("/api/slides/").status_code == 403
    assert client.get(f"/api/slides/{slide.pk}/tiles/").status_code == 403
    assert client.get(f"/api/slides/{slide.pk}/tiles/0/0/0.jpg").status_code == 404
    assert client.get(f"/api/slides/{slide.pk}/thumbnail.jpg").status_code == 404
    assert client.get("/").status_code == 302


def test_tiles_are_jpeg_with_pyramid_metadata(client_for, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "stritt_test3-DAPI-2-387.ndpi"))
    slide = Slide.objects.get()
    client = client_for("annotator")
    metadata = client.get(f"/api/slides/{slide.pk}/tiles/").json()
    assert (metadata["width_px"], metadata["height_px"]) == (3968, 4864)
    top = metadata["levels"] - 1
    response = client.get(f"/api/slides/{slide.pk}/tiles/{top}/1/2.jpg")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert "immutable" in response["Cache-Control"]
    tile = Image.open(io.BytesIO(response.content))
    assert tile.size == (metadata["tile_px"], metadata["tile_px"])
    whole = Image.open(io.BytesIO(client.get(f"/api/slides/{slide.pk}/tiles/0/0/0.jpg").content))
    assert max(whole.size) <= metadata["tile_px"]
    assert client.get(f"/api/slides/{slide.pk}/tiles/{top}/999/0.jpg").status_code == 404
    thumbnail = Image.open(io.BytesIO(client.get(f"/api/slides/{slide.pk}/thumbnail.jpg").content))
    assert max(thumbnail.size) == 512


def test_slide_pages_render_for_annotator(client_for, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    client = client_for("annotator")
    listing = client.get("/")
    assert listing.status_code == 200
    assert b"cmu-1-small-region" in listing.content
    assert b"upload-form" not in listing.content
    page = client.get(f"/slides/{slide.pk}/")
    assert page.status_code == 200
    assert b'data-slide-id="%d"' % slide.pk in page.content
    assert b"start-proposals" in page.content


def test_tissue_endpoint_returns_level0_geometry(client_for, shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    body = client_for("annotator").get(f"/api/slides/{slide.pk}/tissue/").json()
    json.dumps(body, allow_nan=False)
    from shapely.geometry import shape

    tissue = shape(body["geometry"])
    assert tissue.is_valid
    minx, miny, maxx, maxy = tissue.bounds
    assert minx >= 0
    assert miny >= 0
    assert maxx <= 2220
    assert maxy <= 2967


def test_missing_slide_file_gives_clear_404(client_for, shared_data, tmp_path):
    copy = tmp_path / "copy.svs"
    copy.write_bytes((shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes())
    call_command("import_slides", str(copy))
    slide = Slide.objects.get()
    copy.unlink()
    client = client_for("annotator")
    response = client.get(f"/api/slides/{slide.pk}/tiles/")
    assert response.status_code == 404
    assert "copy.svs is missing" in response.json()["detail"]
    assert client.get(f"/api/slides/{slide.pk}/tiles/0/0/0.jpg").status_code == 404


def test_pathologist_assigns_slide_from_list(client_for, make_user, shared_data):
    from apps.review.models import SlideAssignment

    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    reviewer = make_user("annotator", username="ann")
    client = client_for("pathologist")
    response = client.post("/review/assign/", {"slide": slide.pk, "reviewer": "ann"}, follow=True)
    assert response.status_code == 200
    assert b"is assigned to ann" in response.content
    assignment = SlideAssignment.objects.get()
    assert (assignment.slide, assignment.reviewer) == (slide, reviewer)
    client.post("/review/assign/", {"slide": slide.pk, "reviewer": "ann"})
    assert SlideAssignment.objects.count() == 1


def test_reimport_same_path_is_not_duplicated(shared_data, capsys):
    path = shared_data / "wsi" / "cmu-1-small-region.svs"
    call_command("import_slides", str(path))
    call_command("import_slides", str(path))
    slide = Slide.objects.get()
    assert f"already imported {path}: slide {slide.pk}" in capsys.readouterr().out


def test_fluorescence_slide_imported_with_warning(shared_data, capsys, client_for):
    path = shared_data / "wsi" / "stritt_test3-DAPI-2-387.ndpi"
    call_command("import_slides", str(path))
    slide = Slide.objects.get()
    assert len(slide.warnings) == 1
    assert "fluorescence" in slide.warnings[0]
    assert f"warning {path}: The slide is" in capsys.readouterr().err
    page = client_for("annotator").get(f"/slides/{slide.pk}/")
    assert b"may be a fluorescence or dark-field scan" in page.content


def test_blank_slide_warns_no_tissue(shared_data):
    call_command("import_slides", str(shared_data / "wsi" / "highdicom_sm_image.dcm"))
    slide = Slide.objects.get()
    assert slide.tissue_area_um2 == 0
    assert any("No tissue was found" in w for w in slide.warnings)


def test_upload_error_names_users_file(client_for, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    response = _upload(client_for("admin"), "my scan.png", _png_bytes())
    detail = response.json()["detail"]
    assert detail.startswith("my scan.png")
    assert str(tmp_path) not in detail


def test_admin_deletes_uploaded_slide_and_its_file(client_for, shared_data, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    client = client_for("admin")
    content = (shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()
    slide_id = _upload(client, "cmu.svs", content).json()["id"]
    folder = Path(Slide.objects.get(pk=slide_id).file_path).parent
    assert folder.exists()
    response = client.delete(f"/api/slides/{slide_id}/")
    assert response.status_code == 204
    assert not Slide.objects.filter(pk=slide_id).exists()
    assert not folder.exists()


def test_deleting_imported_slide_keeps_file(client_for, shared_data):
    path = shared_data / "wsi" / "cmu-1-small-region.svs"
    call_command("import_slides", str(path))
    slide = Slide.objects.get()
    assert client_for("admin").delete(f"/api/slides/{slide.pk}/").status_code == 204
    assert path.exists()
    assert Slide.objects.count() == 0


def test_upload_rejects_section_beyond_column(client_for, shared_data, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    content = (shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()

    response = _upload(client_for("admin"), "cmu.svs", content, section=2**31)

    assert response.status_code == 400
    assert response.json() == {
        "section": ["Ensure this value is less than or equal to 2147483647."]
    }
    assert not Slide.objects.exists()


def test_import_rejects_section_beyond_column(shared_data):
    from apps.slides.services import import_slide
    from ml.errors import SlideError

    with pytest.raises(SlideError, match="section must be a whole number from 0 to 2147483647"):
        import_slide(shared_data / "wsi" / "cmu-1-small-region.svs", section=2**31)
    assert not Slide.objects.exists()
