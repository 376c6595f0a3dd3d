"""Reviewers work a slide's queue in Chromium with the keyboard and the mouse, and the
database ends up holding exactly what they did.

Screenshots of each step are written to the test's tmp_path."""

from collections import Counter

import pytest
from django.core.management import call_command
from shapely.geometry import Polygon

from apps.annotations.geometry import instance_row
from apps.annotations.models import EvaluationRegion, Instance, InstanceEvent
from apps.slides.models import Slide

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser

SIDE_PX = 160  # level-0 side of each square proposal
# name -> (x, y) of the top-left corner in level-0 pixels, SAM predicted IoU.
PROPOSALS = {
    "clear": ((300, 300), 0.95),
    "doubtful": ((1200, 500), 0.55),
    "middling": ((500, 1500), 0.70),
    "likely": ((1400, 2200), 0.85),
}
QUEUE_ORDER = ["doubtful", "middling", "likely", "clear"]  # lowest predicted IoU first


def _square(name):
    (x, y), _ = PROPOSALS[name]
    return [(x, y), (x + SIDE_PX, y), (x + SIDE_PX, y + SIDE_PX), (x, y + SIDE_PX), (x, y)]


def _centre(name):
    (x, y), _ = PROPOSALS[name]
    return x + SIDE_PX / 2, y + SIDE_PX / 2


def _slide_with_proposals(make_user, shared_data, usernames):
    for username in usernames:
        make_user("annotator", username=username, password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    ids = {}
    for name, (_, iou) in PROPOSALS.items():
        row = instance_row(
            Polygon(_square(name)), slide=slide, mpp=slide.mpp,
            source=Instance.Source.SAM, predicted_iou=iou,
        )
        row.save()
        ids[name] = row.pk
    return slide.pk, ids



def _open_slide(page, url, slide_id):
    page.goto(f"{url}/slides/{slide_id}/")
    page.wait_for_function("Number(document.querySelector('#viewer').dataset.tilesLoaded) > 0")
    page.wait_for_function("document.querySelector('#review-queue').dataset.count !== '0'")


def _wait_for_current(page, instance_id, **attributes):
    """Wait until #current-object shows the object, with data-* attributes as given."""
    selector = f"#current-object[data-instance-id='{instance_id}']"
    for name, value in attributes.items():
        selector += f"[data-{name.replace('_', '-')}='{value}']"
    page.wait_for_selector(selector, state="attached")


def _wait_until_centred_on(page, x, y):
    """Wait until the viewer has stopped moving with level-0 (x, y) in the middle."""
    page.wait_for_function(
        """([x, y]) => {
            const viewer = document.querySelector('#viewer');
            if (viewer.dataset.animating !== '0' || !viewer.dataset.viewLevel0) return false;
            const [x0, y0, x1, y1] = viewer.dataset.viewLevel0.split(',').map(Number);
            return Math.abs((x0 + x1) / 2 - x) < 2 && Math.abs((y0 + y1) / 2 - y) < 2;
        }""",
        arg=[x, y],
    )


def _screen_point(page, x, y):
    """Page coordinates of level-0 (x, y), and the screen pixels per level-0 pixel."""
    box = page.locator("#viewer").bounding_box()
    x0, y0, x1, _ = (float(v) for v in page.get_attribute("#viewer", "data-view-level0").split(","))
    scale = box["width"] / (x1 - x0)
    return box["x"] + (x - x0) * scale, box["y"] + (y - y0) * scale, scale


def _queue_ids(page):
    return page.eval_on_selector_all(
        "#review-queue li", "entries => entries.map((entry) => Number(entry.dataset.instanceId))"
    )


def _rows(ids):
    return {name: Instance.objects.get(pk=pk) for name, pk in ids.items()}


def _event_actions(instance_ids):
    return Counter(
        InstanceEvent.objects.filter(instance_ref__in=instance_ids).values_list("action", flat=True)
    )


def _drag(page, start, offset):
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + offset[0] / 2, start[1] + offset[1] / 2, steps=4)
    page.mouse.move(start[0] + offset[0], start[1] + offset[1], steps=4)
    page.mouse.up()


def test_reviewer_round_by_keyboard_and_mouse(
    live_product, browser_page, make_user, shared_data, tmp_path
):
    slide_id, ids = in_thread(_slide_with_proposals, make_user, shared_data, ["anna"])
    page = browser_page
    sign_in(page, live_product, "anna")
    _open_slide(page, live_product, slide_id)

    # The queue lists the pending proposals with the lowest predicted IoU first, and
    # the first one is current, framed in the middle of the view.
    assert _queue_ids(page) == [ids[name] for name in QUEUE_ORDER]
    _wait_for_current(page, ids["doubtful"], review_state="pending", version=1)
    _wait_until_centred_on(page, *_centre("doubtful"))
    page.screenshot(path=str(tmp_path / "1-first-in-queue.png"))

    page.keyboard.press("?")
    page.wait_for_selector("#shortcut-help[open]")
    assert "Accept the current object" in page.inner_text("#shortcut-help")
    page.screenshot(path=str(tmp_path / "2-shortcut-help.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#shortcut-help:not([open])", state="attached")

    # a accepts and moves on; 4 relabels to glomerulus (key 4), which also accepts.
    page.keyboard.press("a")
    _wait_for_current(page, ids["middling"])
    assert "Accepted" in page.inner_text("#review-message")
    _wait_until_centred_on(page, *_centre("middling"))
    page.keyboard.press("4")
    _wait_for_current(page, ids["likely"])
    assert _queue_ids(page) == [ids["likely"], ids["clear"]]

    # x rejects, z undoes the reject and brings the object back as current.
    page.keyboard.press("x")
    _wait_for_current(page, ids["clear"])
    page.keyboard.press("z")
    _wait_for_current(page, ids["likely"], review_state="pending", version=3)
    assert "Undid the reject" in page.inner_text("#review-message")

    # e shows vertex handles; dragging the top-right corner saves the moved outline.
    _wait_until_centred_on(page, *_centre("likely"))
    page.keyboard.press("e")
    page.wait_for_selector("#review-panel[data-mode='edit']")
    (x, y), _ = PROPOSALS["likely"]
    corner_x, corner_y, scale = _screen_point(page, x + SIDE_PX, y)
    offset_screen = (36, 24)
    _drag(page, (corner_x, corner_y), offset_screen)
    _wait_for_current(page, ids["likely"], review_state="edited", version=4)
    assert "Saved the outline" in page.inner_text("#review-message")
    page.screenshot(path=str(tmp_path / "3-edited-outline.png"))
    page.keyboard.press("Escape")
    page.wait_for_selector("#review-panel[data-mode='review']")

    rows = in_thread(_rows, ids)
    assert (rows["doubtful"].review_state, rows["doubtful"].class_name, rows["doubtful"].version) == (
        "accepted", "", 2,
    )
    assert (rows["middling"].review_state, rows["middling"].class_name, rows["middling"].version) == (
        "accepted", "glomerulus", 2,
    )
    assert (rows["likely"].review_state, rows["likely"].version) == ("edited", 4)
    assert (rows["clear"].review_state, rows["clear"].version) == ("pending", 1)

    ring = rows["likely"].geometry["coordinates"][0]
    original = _square("likely")
    assert len(ring) == len(original)
    moved_x, moved_y = ring[1]
    assert moved_x == pytest.approx(x + SIDE_PX + offset_screen[0] / scale, abs=1.0)
    assert moved_y == pytest.approx(y + offset_screen[1] / scale, abs=1.0)
    for index in (0, 2, 3, 4):
        assert tuple(ring[index]) == pytest.approx(original[index], abs=0.01)

    actions = in_thread(_event_actions, list(ids.values()))
    assert actions == Counter({"accept": 1, "relabel": 1, "reject": 1, "undo": 1, "edit": 1})

    # d: clicks add vertices, a double click finishes, and the polygon is saved as drawn.
    page.keyboard.press("d")
    page.wait_for_selector("#review-panel[data-mode='draw']")
    corners_level0 = [(x - 150, y - 100), (x - 60, y - 100), (x - 60, y - 20)]
    clicks = [_screen_point(page, *corner)[:2] for corner in corners_level0]
    page.mouse.click(*clicks[0])
    page.mouse.click(*clicks[1])
    page.mouse.dblclick(*clicks[2])
    page.wait_for_function("document.querySelector('#current-object').dataset.source === 'drawn'")
    hand_drawn = in_thread(Instance.objects.get, pk=int(page.get_attribute("#current-object", "data-instance-id")))
    assert (hand_drawn.review_state, hand_drawn.class_name) == ("accepted", "glomerulus")
    hand_drawn_ring = hand_drawn.geometry["coordinates"][0]
    assert len(hand_drawn_ring) == 4  # three vertices and the closing one
    for stored, corner in zip(hand_drawn_ring, corners_level0):
        assert stored == pytest.approx(corner, abs=1.0)
    page.keyboard.press("Escape")

    # r: the visible area becomes an evaluation region, clipped to the slide.
    page.keyboard.press("r")
    page.wait_for_function("document.querySelector('#review-message').textContent.startsWith('Marked')")
    region = in_thread(EvaluationRegion.objects.get)
    view_x0, view_y0, view_x1, view_y1 = (
        float(v) for v in page.get_attribute("#viewer", "data-view-level0").split(",")
    )
    region_xs = [vertex[0] for vertex in region.geometry["coordinates"][0]]
    region_ys = [vertex[1] for vertex in region.geometry["coordinates"][0]]
    assert min(region_xs) == pytest.approx(max(0.0, view_x0), abs=1.0)
    assert max(region_xs) == pytest.approx(min(2220.0, view_x1), abs=1.0)
    assert min(region_ys) == pytest.approx(max(0.0, view_y0), abs=1.0)
    assert max(region_ys) == pytest.approx(min(2967.0, view_y1), abs=1.0)

    # s: a click on the tissue sends a SAM point prompt. The object is stored as drawn
    # with the palette's class, which the key 4 above selected.
    page.keyboard.press("s")
    page.wait_for_selector("#review-panel[data-mode='sam-point']")
    click_x, click_y, _ = _screen_point(page, x - 120, y + 80)
    page.mouse.click(click_x, click_y)
    page.wait_for_function(
        """() => document.querySelector('#current-object').dataset.source === 'drawn'
            || ['404', '422', '400', '500'].includes(document.querySelector('#review-message').dataset.status)"""
    )
    status = page.get_attribute("#review-message", "data-status")
    if status == "404":
        pytest.skip("POST /api/slides/<id>/prompt/ returned 404: the SAM prompt endpoint has not landed yet.")
    assert status == "", page.inner_text("#review-message")
    page.screenshot(path=str(tmp_path / "4-sam-click.png"))
    drawn_id = int(page.get_attribute("#current-object", "data-instance-id"))
    drawn = in_thread(Instance.objects.get, pk=drawn_id)
    assert (drawn.source, drawn.review_state, drawn.class_name) == ("drawn", "accepted", "glomerulus")


def test_two_reviewers_live_change_and_conflict(
    live_product, browser_page, make_user, shared_data, tmp_path
):
    slide_id, ids = in_thread(_slide_with_proposals, make_user, shared_data, ["anna", "ben"])
    page_a = browser_page
    context_b = page_a.context.browser.new_context(viewport={"width": 1400, "height": 900})
    page_b = context_b.new_page()
    try:
        for page, username in ((page_a, "anna"), (page_b, "ben")):
            sign_in(page, live_product, username)
            _open_slide(page, live_product, slide_id)
            _wait_for_current(page, ids["doubtful"], version=1)

        # Anna accepts: Ben's page shows it live, in his current object and in his queue.
        page_a.keyboard.press("a")
        _wait_for_current(page_a, ids["middling"])
        _wait_for_current(page_b, ids["doubtful"], review_state="accepted", version=2)
        assert "changed by anna" in page_b.inner_text("#review-message")
        page_b.wait_for_function(
            f"!document.querySelector(\"#review-queue li[data-instance-id='{ids['doubtful']}']\")"
        )

        # Ben moves on and grabs a vertex of the next object. While he drags, Anna
        # relabels that object, so Ben's change builds on a stale version.
        page_b.keyboard.press("j")
        _wait_for_current(page_b, ids["middling"], version=1)
        _wait_until_centred_on(page_b, *_centre("middling"))
        page_b.keyboard.press("e")
        page_b.wait_for_selector("#review-panel[data-mode='edit']")
        (x, y), _ = PROPOSALS["middling"]
        corner_x, corner_y, _ = _screen_point(page_b, x, y + SIDE_PX)
        page_b.mouse.move(corner_x, corner_y)
        page_b.mouse.down()
        page_b.mouse.move(corner_x - 30, corner_y + 20, steps=4)

        page_a.keyboard.press("4")
        _wait_for_current(page_a, ids["likely"])
        page_b.wait_for_selector(f"#review-panel[data-last-change='{ids['middling']}:2']", state="attached")
        page_b.mouse.up()

        # Ben's save is refused with the server's message, and his copy becomes Anna's.
        page_b.wait_for_selector("#review-message[data-status='409']", state="attached")
        message = page_b.inner_text("#review-message")
        assert "was changed by anna" in message
        assert "Your change was not saved" in message
        _wait_for_current(page_b, ids["middling"], version=2, class_name="glomerulus", review_state="accepted")
        page_b.screenshot(path=str(tmp_path / "conflict-seen-by-ben.png"))

        middling = in_thread(Instance.objects.get, pk=ids["middling"])
        assert (middling.review_state, middling.class_name, middling.version) == ("accepted", "glomerulus", 2)
        stored_vertices = [c for vertex in middling.geometry["coordinates"][0] for c in vertex]
        assert stored_vertices == pytest.approx([c for vertex in _square("middling") for c in vertex])
        events = in_thread(
            lambda: list(
                InstanceEvent.objects.filter(instance_ref=ids["middling"]).values_list("action", "user__username")
            )
        )
        assert events == [("relabel", "anna")]
    finally:
        context_b.close()


def _slide_with_stacked_squares(make_user, shared_data):
    make_user("annotator", username="sam", password=PASSWORD)
    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))
    slide = Slide.objects.get()
    ids = {}
    for name, (x0, y0, side), iou in (("small", (850, 1250, 100), 0.5), ("large", (800, 1200, 200), 0.9)):
        row = instance_row(
            Polygon([(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]),
            slide=slide, mpp=slide.mpp, source=Instance.Source.SAM, predicted_iou=iou,
        )
        row.save()
        ids[name] = row.pk
    return slide.pk, ids


def test_click_steps_through_stacked_objects(live_product, browser_page, make_user, shared_data):
    slide_id, ids = in_thread(_slide_with_stacked_squares, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "sam")
    _open_slide(page, live_product, slide_id)
    _wait_for_current(page, ids["small"])
    _wait_until_centred_on(page, 900, 1300)
    x, y, _ = _screen_point(page, 900, 1300)
    page.mouse.click(x, y)
    _wait_for_current(page, ids["large"])
    page.mouse.click(x, y)
    _wait_for_current(page, ids["small"])
