"""Review transitions, conflicts, undo and history at the service level, with the exact
rows each action changes."""

import pytest
from shapely.geometry import Polygon, box, shape

from apps.annotations.classes import UnknownClassError
from apps.annotations.geometry import instance_row
from apps.annotations.models import Instance, InstanceEvent
from apps.review import services
from apps.review.services import ReviewError, VersionConflict
from tests.conftest import create_slide_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def slide():
    return create_slide_record()


@pytest.fixture
def proposal(slide):
    instance = instance_row(box(100, 100, 200, 200), slide=slide, mpp=slide.mpp,
                            source=Instance.Source.SAM, predicted_iou=0.8)
    instance.save()
    return instance


@pytest.fixture
def reviewer(make_user):
    return make_user("annotator", username="ann")


def _state(instance_id):
    row = Instance.objects.get(pk=instance_id)
    return row.review_state, row.class_name, row.version


def test_accept_changes_state_version_and_history(proposal, reviewer):
    services.accept(proposal.pk, user=reviewer, version=1)
    assert _state(proposal.pk) == ("accepted", "", 2)
    event = InstanceEvent.objects.get()
    assert (event.action, event.user, event.instance_ref) == ("accept", reviewer, proposal.pk)
    assert event.before["review_state"] == "pending"
    assert event.after["review_state"] == "accepted"
    assert event.after["version"] == 2
    assert Instance.objects.get(pk=proposal.pk).reviewed_by == reviewer


def test_accept_twice_rejected(proposal, reviewer):
    services.accept(proposal.pk, user=reviewer, version=1)
    with pytest.raises(ReviewError, match="it is accepted"):
        services.accept(proposal.pk, user=reviewer, version=2)
    assert InstanceEvent.objects.count() == 1


def test_relabel_pending_accepts_it(proposal, reviewer):
    services.relabel(proposal.pk, user=reviewer, version=1, class_name="glomerulus")
    assert _state(proposal.pk) == ("accepted", "glomerulus", 2)


def test_relabel_edited_keeps_state(proposal, reviewer):
    services.edit(proposal.pk, user=reviewer, version=1, geometry=box(100, 100, 250, 250).__geo_interface__)
    services.relabel(proposal.pk, user=reviewer, version=2, class_name="vessel")
    assert _state(proposal.pk) == ("edited", "vessel", 3)


def test_relabel_unknown_class_rejected(proposal, reviewer):
    with pytest.raises(UnknownClassError, match="Unknown class .tumour."):
        services.relabel(proposal.pk, user=reviewer, version=1, class_name="tumour")
    assert _state(proposal.pk) == ("pending", "", 1)


def test_reject_then_reopen(proposal, reviewer):
    services.reject(proposal.pk, user=reviewer, version=1)
    assert _state(proposal.pk) == ("rejected", "", 2)
    with pytest.raises(ReviewError, match="reopened first|relabel applies"):
        services.relabel(proposal.pk, user=reviewer, version=2, class_name="vessel")
    services.reopen(proposal.pk, user=reviewer, version=2)
    assert _state(proposal.pk) == ("pending", "", 3)
    with pytest.raises(ReviewError, match="reopen applies"):
        services.reopen(proposal.pk, user=reviewer, version=3)


def test_edit_stores_geometry_bbox_area(proposal, reviewer):
    ring = [(100, 100), (300, 100), (300, 300), (100, 300), (100, 100)]
    hole = [(150, 150), (200, 150), (200, 200), (150, 200), (150, 150)]
    geometry = Polygon(ring, [hole]).__geo_interface__
    services.edit(proposal.pk, user=reviewer, version=1, geometry=geometry, class_name="glomerulus")
    row = Instance.objects.get(pk=proposal.pk)
    assert (row.review_state, row.class_name, row.version) == ("edited", "glomerulus", 2)
    assert (row.x_min_level0, row.y_min_level0, row.x_max_level0, row.y_max_level0) == (100, 100, 300, 300)
    assert row.area_um2 == pytest.approx((200 * 200 - 50 * 50) * 0.25)
    assert len(shape(row.geometry).interiors) == 1


def test_edit_repairs_bow_tie(proposal, reviewer):
    bow_tie = {"type": "Polygon", "coordinates": [[[0, 0], [100, 100], [100, 0], [0, 100], [0, 0]]]}
    services.edit(proposal.pk, user=reviewer, version=1, geometry=bow_tie)
    polygon = shape(Instance.objects.get(pk=proposal.pk).geometry)
    assert polygon.is_valid
    assert polygon.area == pytest.approx(5000)


@pytest.mark.parametrize("geometry, message", [
    ({"type": "Point", "coordinates": [1, 2]}, "Polygon or MultiPolygon"),
    ({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [0, 0]]]}, "no area|not valid"),
    ({"type": "Polygon", "coordinates": "nonsense"}, "not valid GeoJSON"),
    (box(3900, 10, 4100, 50).__geo_interface__, "outside the slide"),
])
def test_edit_rejects_bad_geometry(proposal, reviewer, geometry, message):
    with pytest.raises(ReviewError, match=message):
        services.edit(proposal.pk, user=reviewer, version=1, geometry=geometry)
    assert _state(proposal.pk) == ("pending", "", 1)
    assert InstanceEvent.objects.count() == 0


def test_stale_version_conflicts_and_keeps_newer_edit(proposal, reviewer, make_user):
    other = make_user("pathologist", username="path")
    services.relabel(proposal.pk, user=other, version=1, class_name="glomerulus")
    with pytest.raises(VersionConflict) as raised:
        services.relabel(proposal.pk, user=reviewer, version=1, class_name="vessel")
    assert "changed by path" in str(raised.value)
    assert raised.value.status_code == 409
    assert raised.value.extra["current"]["properties"]["class_name"] == "glomerulus"
    assert _state(proposal.pk) == ("accepted", "glomerulus", 2)
    assert InstanceEvent.objects.count() == 1


def test_draw_creates_accepted_instance(slide, reviewer):
    instance = services.draw(slide, user=reviewer, geometry=box(10, 10, 60, 40).__geo_interface__,
                             class_name="vessel")
    row = Instance.objects.get(pk=instance.pk)
    assert (row.source, row.review_state, row.class_name, row.version) == ("drawn", "accepted", "vessel", 1)
    assert row.area_um2 == pytest.approx(50 * 30 * 0.25)
    assert InstanceEvent.objects.get().action == "draw"


def test_undo_restores_previous_state(proposal, reviewer):
    services.relabel(proposal.pk, user=reviewer, version=1, class_name="glomerulus")
    undo = services.undo_last(proposal.slide, user=reviewer)
    assert _state(proposal.pk) == ("pending", "", 3)
    assert undo.undoes.action == "relabel"
    with pytest.raises(ReviewError, match="nothing of yours to undo"):
        services.undo_last(proposal.slide, user=reviewer)


def test_undo_edit_restores_geometry(proposal, reviewer):
    services.edit(proposal.pk, user=reviewer, version=1, geometry=box(0, 0, 500, 500).__geo_interface__)
    services.undo_last(proposal.slide, user=reviewer)
    row = Instance.objects.get(pk=proposal.pk)
    assert shape(row.geometry).equals(box(100, 100, 200, 200))
    assert (row.x_max_level0, row.area_um2) == (200, pytest.approx(100 * 100 * 0.25))
    assert row.review_state == "pending"


def test_undo_draw_deletes_it(slide, reviewer):
    instance = services.draw(slide, user=reviewer, geometry=box(10, 10, 60, 40).__geo_interface__,
                             class_name="vessel")
    services.undo_last(slide, user=reviewer)
    assert not Instance.objects.filter(pk=instance.pk).exists()


def test_undo_delete_restores_row(proposal, make_user):
    admin = make_user("admin", username="boss")
    services.delete(proposal.pk, user=admin, version=1)
    assert not Instance.objects.filter(pk=proposal.pk).exists()
    services.undo_last(proposal.slide, user=admin)
    row = Instance.objects.get(pk=proposal.pk)
    assert (row.review_state, row.source, row.predicted_iou) == ("pending", "sam", 0.8)
    assert shape(row.geometry).equals(box(100, 100, 200, 200))


def test_undo_refused_after_someone_else_changed(proposal, reviewer, make_user):
    other = make_user("pathologist", username="path")
    services.accept(proposal.pk, user=reviewer, version=1)
    services.relabel(proposal.pk, user=other, version=2, class_name="vessel")
    with pytest.raises(VersionConflict):
        services.undo_last(proposal.slide, user=reviewer)
    assert _state(proposal.pk) == ("accepted", "vessel", 3)


def test_undo_only_own_changes(proposal, reviewer, make_user):
    other = make_user("pathologist", username="path")
    services.accept(proposal.pk, user=other, version=1)
    with pytest.raises(ReviewError, match="nothing of yours"):
        services.undo_last(proposal.slide, user=reviewer)


@pytest.mark.parametrize("body", ["false", "[1, 2]", '"a string"'])
def test_evaluation_region_api_rejects_non_object_body(client_for, slide, body):
    client = client_for("annotator")

    response = client.post(
        f"/api/slides/{slide.pk}/evaluation-regions/", body, content_type="application/json"
    )

    assert response.status_code == 400
    assert "Expected a dictionary" in response.json()["non_field_errors"][0]


def test_evaluation_region_api_names_missing_geometry(client_for, slide):
    client = client_for("annotator")

    response = client.post(
        f"/api/slides/{slide.pk}/evaluation-regions/", {}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {"geometry": ["This field is required."]}
