"""An admin imports an annotation file on the slide page, maps its unknown class name in
the browser and exports the result. The objects reach the database and the export with
the chosen class."""

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from shapely.geometry import shape

from apps.annotations.models import Instance
from apps.slides.models import Slide

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser


def _prepare(make_user, shared_data):
    make_user("admin", username="ada", password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    return Slide.objects.get().pk


def test_import_with_class_mapping(live_product, browser_page, make_user, shared_data, tmp_path):
    slide_id = in_thread(_prepare, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "ada")
    page.goto(f"{live_product}/slides/{slide_id}/")
    page.wait_for_function("Number(document.querySelector('#viewer').dataset.tilesLoaded) > 0")
    cells = shared_data / "annotations" / "qupath_geojson" / "luna_test_cell_detections_SEMISYNTHETIC.geojson"
    page.set_input_files("#import-file", str(cells))
    page.click("#import-form button[type=submit]")
    page.wait_for_selector("#import-mapping select[data-source-class='Other']")
    assert "'Other' (2)" in page.inner_text("#import-message")
    assert in_thread(Instance.objects.count) == 0

    page.select_option("#import-mapping select[data-source-class='Other']", "distal tubule")
    page.click("#import-form button[type=submit]")
    page.wait_for_function("document.querySelector('#import-message').textContent.startsWith('Imported')")
    assert "Imported 2 objects" in page.inner_text("#import-message")
    assert "distal tubule: 2" in page.inner_text("#import-report")
    rows = in_thread(lambda: list(Instance.objects.values_list("class_name", "review_state", "source")))
    assert rows == [("distal tubule", "accepted", "imported")] * 2
    page.wait_for_function("Number(document.querySelector('#instance-overlay').dataset.drawn) >= 2")
    page.screenshot(path=str(tmp_path / "imported.png"))

    with page.expect_download() as download_info:
        page.click("text=Export GeoJSON (QuPath)")
    exported = json.loads(Path(download_info.value.path()).read_text(encoding="utf-8"))
    assert exported["type"] == "FeatureCollection"
    classes = [f["properties"]["classification"]["name"] for f in exported["features"]]
    assert classes == ["distal tubule", "distal tubule"]
    areas = sorted(round(shape(f["geometry"]).area) for f in exported["features"])
    assert areas == [131072, 262144]
