"""A reviewer reads the IFTA % of a slide in Chromium, shows the IFTA regions, and the
number follows an accepted atrophic tubule."""

import pytest
from django.core.management import call_command
from shapely.geometry import box

from apps.analysis.readouts import current_readout
from apps.annotations.geometry import instance_row
from apps.annotations.models import Instance
from apps.slides.models import Slide

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser

# Three 40 px atrophic tubules 10 px apart form one cluster (the default min_tubules is 3).
CLUSTER = [box(500 + 50 * i, 500, 540 + 50 * i, 540) for i in range(3)]
# A fourth, pending tubule 10 px right of the cluster joins it once accepted.
FOURTH = box(650, 500, 690, 540)


def _slide_with_cluster(make_user, shared_data):
    make_user("annotator", username="anna", password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    outlines = [(box(0, 0, 2000, 2000), "cortex", Instance.ReviewState.ACCEPTED)]
    outlines += [(tubule, "atrophic tubule", Instance.ReviewState.ACCEPTED) for tubule in CLUSTER]
    outlines.append((FOURTH, "atrophic tubule", Instance.ReviewState.PENDING))
    for geometry, class_name, state in outlines:
        instance_row(geometry, slide=slide, mpp=slide.mpp, source=Instance.Source.DRAWN,
                     class_name=class_name, review_state=state).save()
    return slide


def _reviewed_ifta_pct(slide) -> float:
    return current_readout(slide, "reviewed").ifta_pct


def test_ifta_panel_and_layer_follow_review(live_product, browser_page, make_user, shared_data):
    slide = in_thread(_slide_with_cluster, make_user, shared_data)
    expected_before = in_thread(_reviewed_ifta_pct, slide)
    assert 0.0 < expected_before < 1.0

    page = browser_page
    sign_in(page, live_product, "anna")
    page.goto(f"{live_product}/slides/{slide.pk}/")
    page.wait_for_function("document.querySelector('#readout-panel').dataset.iftaPct !== ''")

    assert float(page.get_attribute("#readout-panel", "data-ifta-pct")) == expected_before
    assert page.inner_text("[data-readout=ifta]") == f"{expected_before:.2f} %"
    assert page.inner_text("[data-readout=cortex]").endswith("(cortex annotation)")
    assert page.inner_text("[data-readout=clusters]") == "1 (3 atrophic tubules)"
    assert page.inner_text("[data-readout=banff]") == "ci 0 · ct 0"
    assert page.eval_on_selector_all("#readout-source option", "els => els.map(e => e.textContent)") == [
        "Reviewed annotations"
    ]
    assert page.get_attribute("#viewer", "data-ifta-drawn") == "0"

    page.check("#toggle-ifta")
    page.wait_for_function("document.querySelector('#viewer').dataset.iftaDrawn === '1'")

    page.wait_for_function("document.querySelector('#current-object')?.dataset.instanceId")
    page.keyboard.press("a")
    page.wait_for_function(
        "Number(document.querySelector('#readout-panel').dataset.iftaPct) > "
        f"{expected_before!r}",
        timeout=30_000,
    )

    accepted = in_thread(Instance.objects.get, x_min_level0=650)
    assert accepted.review_state == "accepted"
    expected_after = in_thread(_reviewed_ifta_pct, slide)
    assert expected_after > expected_before
    assert float(page.get_attribute("#readout-panel", "data-ifta-pct")) == expected_after
    assert page.inner_text("[data-readout=clusters]") == "1 (4 atrophic tubules)"
    assert page.get_attribute("#viewer", "data-ifta-drawn") == "1"
