"""A reviewer opens a slide in Chromium, views tiles and polygons, runs SAM proposals and
watches them arrive. The tiny SAM has random weights, so this checks plumbing only."""


import pytest
from django.core.management import call_command
from shapely.geometry import Polygon

from apps.annotations.geometry import instance_row
from apps.annotations.models import Instance, ProposalRun
from apps.slides.models import Slide

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser




def _overlay_pixels(page) -> int:
    return page.evaluate(
        """() => {
            const canvas = document.querySelector('#instance-overlay');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }"""
    )


def _slide_with_accepted_square(make_user, shared_data):
    make_user("annotator", username="anna", password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    square = Polygon([(900, 1200), (1100, 1200), (1100, 1400), (900, 1400)])
    instance_row(
        square, slide=slide, mpp=slide.mpp, source=Instance.Source.DRAWN,
        class_name="glomerulus", review_state="accepted",
    ).save()
    return slide


def test_slide_page_shows_tiles_polygons_and_live_proposals(
    live_product, browser_page, make_user, shared_data, tmp_path
):
    in_thread(_slide_with_accepted_square, make_user, shared_data)

    page = browser_page
    sign_in(page, live_product, "anna")
    assert "cmu-1-small-region" in page.content()
    page.click("text=cmu-1-small-region")
    page.wait_for_function("Number(document.querySelector('#viewer').dataset.tilesLoaded) > 0")
    page.wait_for_function("document.querySelector('#instance-overlay')?.dataset.drawn === '1'")
    assert _overlay_pixels(page) > 0
    assert "1 objects in view" in page.inner_text("#overlay-status")

    page.click("#start-proposals")
    page.wait_for_function(
        "['succeeded', 'failed'].includes(document.querySelector('#run-panel').dataset.runStatus)",
        timeout=240_000,
    )
    run = in_thread(ProposalRun.objects.get)
    assert run.status == "succeeded", run.message
    stored = run.counts["stored"]
    assert stored > 0
    page.wait_for_function(
        f"Number(document.querySelector('#instance-overlay').dataset.drawn) === {1 + stored}",
        timeout=30_000,
    )
    assert page.inner_text("[data-count=stored]") == str(stored)
    assert f"{run.tiles_total} / {run.tiles_total} tiles with tissue" in page.inner_text("#run-status")
    page.screenshot(path=str(tmp_path / "slide-page.png"))
