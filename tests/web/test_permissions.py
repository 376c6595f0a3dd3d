"""Every role (and anonymous) against every endpoint: who may do what.

The table lists each URL name once. A test fails when an endpoint has no row, so a new
endpoint cannot ship without a test of its permission check.
"""

import pytest
from django.urls import get_resolver
from shapely.geometry import box

from apps.annotations.geometry import instance_row
from apps.annotations.models import EvaluationRegion, Instance, ProposalRun
from apps.review.models import SlideAssignment
from apps.slides.models import Slide

pytestmark = pytest.mark.django_db

ROLES = [None, "annotator", "pathologist", "admin"]
EVERYONE = {"annotator", "pathologist", "admin"}
REVIEWERS = EVERYONE
PATHOLOGISTS = {"pathologist", "admin"}
ADMINS = {"admin"}

# url name -> (method, path template, body, roles allowed). Allowed requests may still
# fail validation (400) or find nothing (404); denied ones must get 403 (404 for images).
ENDPOINTS = {
    "slide-list": ("get", "/", None, EVERYONE),
    "slide-detail": ("get", "/slides/{slide}/", None, EVERYONE),
    "api-slide-list": ("get", "/api/slides/", None, EVERYONE),
    "api-schema": ("get", "/api/schema/", None, EVERYONE),
    "api-slide-detail": ("delete", "/api/slides/{slide}/", None, ADMINS),
    "api-slide-tissue": ("get", "/api/slides/{slide}/tissue/", None, EVERYONE),
    "api-tile-metadata": ("get", "/api/slides/{slide}/tiles/", None, EVERYONE),
    "api-tile": ("get", "/api/slides/{slide}/tiles/0/0/0.jpg", None, EVERYONE),
    "api-thumbnail": ("get", "/api/slides/{slide}/thumbnail.jpg", None, EVERYONE),
    "api-proposal-runs": ("post", "/api/slides/{slide}/proposal-runs/", {"settings": {"points_per_side": 0}}, EVERYONE),
    "api-proposal-run": ("get", "/api/proposal-runs/{run}/", None, EVERYONE),
    "api-proposal-run-cancel": ("post", "/api/proposal-runs/{run}/cancel/", {}, EVERYONE),
    "api-segmentation-models": ("get", "/api/segmentation-models/", None, EVERYONE),
    "api-instances": ("get", "/api/slides/{slide}/instances/?bbox=0,0,10,10", None, EVERYONE),
    "api-export-geojson": ("get", "/api/slides/{slide}/export.geojson", None, PATHOLOGISTS),
    "api-export-slide-csv": ("get", "/api/slides/{slide}/export.csv", None, PATHOLOGISTS),
    "api-annotation-import": ("post", "/api/slides/{slide}/annotation-imports/", {}, ADMINS),
    "api-export-cohort-csv": ("get", "/api/export/cohort.csv", None, PATHOLOGISTS),
    "api-export-reviewers-csv": ("get", "/api/export/reviewers.csv", None, PATHOLOGISTS),
    "api-classes": ("get", "/api/classes/", None, EVERYONE),
    "api-instance": ("delete", "/api/instances/{instance}/?version=1", None, ADMINS),
    "api-instance-history": ("get", "/api/instances/{instance}/history/", None, EVERYONE),
    "api-instance-change": ("post", "/api/instances/{instance}/accept/", {"version": 1}, REVIEWERS),
    "api-draw": ("post", "/api/slides/{slide}/draw/", {"geometry": {"type": "Point"}, "class_name": "vessel"}, REVIEWERS),
    "api-prompt": ("post", "/api/slides/{slide}/prompt/", {"class_name": "vessel"}, REVIEWERS),
    "api-undo": ("post", "/api/slides/{slide}/undo/", {}, REVIEWERS),
    "api-slide-history": ("get", "/api/slides/{slide}/history/", None, EVERYONE),
    "api-review-progress": ("get", "/api/slides/{slide}/review-progress/", None, EVERYONE),
    "api-evaluation-regions": ("post", "/api/slides/{slide}/evaluation-regions/", {"geometry": None}, REVIEWERS),
    "api-evaluation-region": ("delete", "/api/evaluation-regions/{region}/", None, PATHOLOGISTS),
    "api-review-queue": ("get", "/api/review/queue/?slide={slide}", None, EVERYONE),
    "assign-slide": ("post", "/review/assign/", None, PATHOLOGISTS),
    "api-assignments": ("post", "/api/review/assignments/", {"slide": 0, "reviewer": "nobody"}, PATHOLOGISTS),
    "api-assignment": ("delete", "/api/review/assignments/{assignment}/", None, PATHOLOGISTS),
    "training": ("get", "/training/", None, ADMINS),
    "api-training-snapshots": ("post", "/api/training/snapshots/", {"seed": -1}, ADMINS),
    "api-training-versions": ("post", "/api/training/versions/", {"snapshot": 0}, ADMINS),
    "api-training-version": ("get", "/api/training/versions/0/", None, ADMINS),
    "api-training-version-cancel": ("post", "/api/training/versions/0/cancel/", {}, ADMINS),
    "dashboard": ("get", "/dashboard/", None, PATHOLOGISTS),
    "dashboard-scatter-png": ("get", "/dashboard/agreement-scatter.png", None, PATHOLOGISTS),
    "dashboard-bland-altman-png": ("get", "/dashboard/bland-altman.png", None, PATHOLOGISTS),
    "dashboard-patient-report": ("post", "/dashboard/patient-reports/", None, PATHOLOGISTS),
    "dashboard-report-import": ("post", "/dashboard/report-imports/", None, PATHOLOGISTS),
    "api-slide-readouts-csv": ("get", "/api/slides/{slide}/readouts.csv", None, PATHOLOGISTS),
    "api-export-readouts-csv": ("get", "/api/export/readouts.csv", None, PATHOLOGISTS),
    "model-comparison": ("get", "/models/", None, PATHOLOGISTS),
    "model-evaluate": ("post", "/models/0/evaluate/", {}, ADMINS),
    "api-model-evaluations": ("post", "/api/model-versions/0/evaluations/", {}, ADMINS),
    "api-model-evaluation": ("get", "/api/model-evaluations/0/", None, PATHOLOGISTS),
    "api-slide-readouts": ("get", "/api/slides/{slide}/readouts/", None, EVERYONE),
    "api-slide-ifta-regions": ("get", "/api/slides/{slide}/ifta-regions/", None, EVERYONE),
    "audit-log": ("get", "/audit/", None, ADMINS),
    "api-audit-events": ("get", "/api/audit/events/", None, ADMINS),
    "api-audit-events-csv": ("get", "/api/audit/events.csv", None, ADMINS),
}
# Pages and views outside the API with their own rules.
NOT_IN_TABLE = {"login", "logout"}


def _fixture_ids(make_user, shared_data):
    slide = Slide.objects.create(
        name="s", file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
        original_filename="cmu-1-small-region.svs", origin=Slide.Origin.IMPORT,
        width_px=2220, height_px=2967, mpp=0.499, mpp_source="slide properties",
        bounds_w_level0=2220, bounds_h_level0=2967,
    )
    instance = instance_row(box(1, 1, 9, 9), slide=slide, mpp=0.5, source=Instance.Source.SAM)
    instance.save()
    run = ProposalRun.objects.create(slide=slide, sam_type="vit_b")
    region = EvaluationRegion.objects.create(slide=slide, geometry=box(0, 0, 5, 5).__geo_interface__)
    assignment = SlideAssignment.objects.create(slide=slide, reviewer=make_user(None, "someone"))
    return {"slide": slide.pk, "instance": instance.pk, "run": run.pk, "region": region.pk,
            "assignment": assignment.pk}


def test_table_covers_every_url_name():
    names = {name for name in get_resolver().reverse_dict if isinstance(name, str)}
    ours = {n for n in names if not n.startswith(("admin", "django"))} - NOT_IN_TABLE
    missing = sorted(n for n in ours if n not in ENDPOINTS and ":" not in n)
    assert missing == []


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_role_against_endpoint(client, make_user, shared_data, role, name):
    ids = _fixture_ids(make_user, shared_data)
    if role is not None:
        client.force_login(make_user(role, username=f"user-{role}"))
    method, template, body, allowed = ENDPOINTS[name]
    url = template.format(**ids)
    call = getattr(client, method)
    response = call(url, body, content_type="application/json") if body is not None else call(url)
    image = name in ("api-tile", "api-thumbnail")
    page = not name.startswith("api-")
    if role in allowed:
        assert response.status_code not in (401, 403), response.content[:300]
        if image:
            assert response.status_code == 200
    elif page and role is None:
        assert response.status_code == 302
        assert "/login/" in response["Location"]
    elif image:
        assert response.status_code == 404
    else:
        assert response.status_code == 403, response.content[:300]


def test_admin_role_manages_users_in_admin_site(client_for):
    client = client_for("admin")
    client.defaults["HTTP_HOST"] = "127.0.0.1"
    user = client.get("/admin/").wsgi_request.user
    user.is_staff = True
    user.save()
    assert client.get("/admin/auth/user/").status_code == 200
    assert client.get("/admin/slides/slide/").status_code == 200


def test_annotator_sees_no_admin_site(client_for):
    client = client_for("annotator")
    response = client.get("/admin/auth/user/")
    assert response.status_code == 302


def test_refused_page_names_the_roles_that_may(client, make_user):
    client.force_login(make_user("annotator", username="anna"))

    response = client.get("/dashboard/")

    assert response.status_code == 403
    assert (
        "it needs the right to view model evaluations, which the pathologist or admin role has"
        in response.content.decode()
    )


def test_refusal_joins_two_rights_with_and(client, make_user):
    client.force_login(make_user(None, username="nobody"))
    slide = Slide.objects.create(
        name="s", original_filename="s.tiff", width_px=10, height_px=10, mpp=0.5,
        file_path="/nonexistent/s.tiff", bounds_w_level0=10, bounds_h_level0=10,
    )

    response = client.post(
        f"/api/slides/{slide.pk}/proposal-runs/", {}, content_type="application/json"
    )

    assert response.status_code == 403
    assert response.json()["detail"] == (
        "Your role does not allow this: it needs the right to view slides and run SAM "
        "proposals, which the annotator, pathologist or admin role has. Ask an admin to give "
        "you that role."
    )
