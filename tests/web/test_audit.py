"""The audit log: each audited action writes exactly its rows, failed changes write none,
the rows commit with their change, and only admins read the log."""

import csv
import datetime as dt
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.forms.models import model_to_dict
from django.utils import timezone
from shapely.geometry import box

from apps.accounts import audit
from apps.accounts.audit_log import CSV_COLUMNS
from apps.accounts.models import AuditEvent, AuditLogAppendOnlyError
from apps.analysis.models import PatientReport
from apps.analysis.predictions import Prediction, write_run_predictions
from apps.annotations.models import EvaluationRegion, Instance, InstanceEvent, ProposalRun
from apps.review import prompting
from apps.review import services as review
from apps.review.models import SlideAssignment
from apps.slides.models import Slide
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.conftest import create_instance_record, create_slide_record

pytestmark = pytest.mark.django_db

PASSWORD = "pw-for-tests-1"
SQUARE = box(100, 100, 200, 200).__geo_interface__
CLASS_NAMES = ["glomerulus", "vessel", "background"]


# ---------------------------------------------------------------------------- helpers


def _last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


class Rows:
    """The audit rows written after a starting point, as (user, action, target, id, slide)."""

    def __init__(self):
        self.start = _last_id()

    def events(self):
        return list(AuditEvent.objects.filter(id__gt=self.start).order_by("id"))

    def get(self):
        return [
            (e.username, e.action, e.target_type, e.target_id, e.slide_id) for e in self.events()
        ]

    def restart(self):
        self.start = _last_id()


@pytest.fixture
def signed_in(client, make_user):
    """Return a function that signs the client in as a new user of a role and returns the user.

    The sign-in row is written before the test starts counting rows.
    """

    def sign_in(role, username=None):
        user = make_user(role, username=username or f"{role}-1")
        client.force_login(user)
        return user

    return sign_in


@pytest.fixture
def slide():
    return create_slide_record("audited", cohort="C1", patient_id="P1", section=1)


@pytest.fixture
def file_slide(shared_data):
    """A slide record of a real file, for the page, tile and thumbnail requests."""
    return create_slide_record(
        "cmu", width_px=2220, height_px=2967, mpp=0.499,
        file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
    )


@pytest.fixture
def proposal(slide):
    return create_instance_record(slide, box(100, 100, 200, 200), "", state="pending", source="sam")


@pytest.fixture
def model_version(slide, settings, tmp_path):
    """A succeeded model version with one stored segmentation of the slide."""
    settings.MEDIA_ROOT = str(tmp_path)
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    version = ModelVersion.objects.create(
        name="audited-model", status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=256, class_names=CLASS_NAMES, weights_path="/nonexistent/model.safetensors",
        weights_sha256="0" * 64,
    )
    run = ProposalRun.objects.create(
        slide=slide, model_version=version, status=ProposalRun.Status.SUCCEEDED,
        sam_type="class-aware", finished_at=timezone.now(),
    )
    write_run_predictions(run, [Prediction(
        geometry_level0=box(100, 100, 200, 200), class_name="glomerulus",
        class_probability=0.9, predicted_iou=0.8,
    )])
    return version


def _post_json(client, url, body=None):
    return client.post(url, body or {}, content_type="application/json")


# ---------------------------------------------------------------------------- record


def test_record_stores_every_field(make_user):
    user = make_user("admin", username="ada")

    event = audit.record(
        audit.Action.EXPORT, user=user, target_type=audit.Target.SLIDE, target_id=12,
        slide_id=12, detail={"file_name": "slide-12.geojson"}, ip_address="10.0.0.7",
    )

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.user, stored.username, stored.action) == (user, "ada", "export")
    assert (stored.target_type, stored.target_id, stored.slide_id) == ("slide", 12, 12)
    assert stored.detail == {"file_name": "slide-12.geojson"}
    assert stored.ip_address == "10.0.0.7"
    assert stored.created_at is not None


def test_record_rejects_unknown_action_and_target():
    with pytest.raises(ValueError, match="Unknown audit action 'peek'"):
        audit.record("peek", target_type=audit.Target.SLIDE)
    with pytest.raises(ValueError, match="Unknown audit target type 'patient'"):
        audit.record(audit.Action.VIEW, target_type="patient")
    assert not AuditEvent.objects.exists()


def test_record_without_user_is_command_line():
    event = audit.record(audit.Action.IMPORT, target_type=audit.Target.REPORT_FILE)
    assert (event.user, event.username, event.ip_address) == (None, "", None)


# ---------------------------------------------------------------------------- views


def test_slide_page_and_detail_api_record_views(client, signed_in, file_slide):
    user = signed_in("annotator", "anna")
    rows = Rows()

    assert client.get(f"/slides/{file_slide.pk}/").status_code == 200
    assert client.get(f"/api/slides/{file_slide.pk}/").status_code == 200

    assert rows.get() == [
        ("anna", "view", "slide", file_slide.pk, file_slide.pk),
        ("anna", "view", "slide", file_slide.pk, file_slide.pk),
    ]
    page_view, api_view = rows.events()
    assert (page_view.detail, api_view.detail) == ({"via": "page"}, {"via": "api"})
    assert page_view.user == user
    assert page_view.ip_address == "127.0.0.1"


def test_tiles_and_viewport_requests_are_not_logged(client, signed_in, file_slide):
    signed_in("annotator")
    rows = Rows()

    for url in [
        f"/api/slides/{file_slide.pk}/tiles/",
        f"/api/slides/{file_slide.pk}/tiles/0/0/0.jpg",
        f"/api/slides/{file_slide.pk}/thumbnail.jpg",
        f"/api/slides/{file_slide.pk}/tissue/",
        f"/api/slides/{file_slide.pk}/instances/?bbox=0,0,100,100",
        f"/api/review/queue/?slide={file_slide.pk}",
        "/api/slides/",
        "/",
    ]:
        assert client.get(url).status_code == 200, url

    assert rows.get() == []


def test_missing_slide_view_writes_nothing(client, signed_in):
    signed_in("annotator")
    rows = Rows()

    assert client.get("/slides/999999/").status_code == 404
    assert client.get("/api/slides/999999/").status_code == 404

    assert rows.get() == []


# ---------------------------------------------------------------------------- review


@pytest.mark.parametrize(
    ("action", "body", "state"),
    [
        ("accept", {}, "accepted"),
        ("reject", {}, "rejected"),
        ("relabel", {"class_name": "vessel"}, "accepted"),
        ("edit", {"geometry": box(100, 100, 260, 260).__geo_interface__}, "edited"),
    ],
)
def test_review_change_writes_one_change_row(client, signed_in, proposal, action, body, state):
    signed_in("annotator", "anna")
    rows = Rows()

    response = _post_json(client, f"/api/instances/{proposal.pk}/{action}/", {"version": 1, **body})

    assert response.status_code == 200, response.content
    assert rows.get() == [("anna", "change", "instance", proposal.pk, proposal.slide_id)]
    detail = rows.events()[0].detail
    assert (detail["change"], detail["version"], detail["review_state"]) == (action, 2, state)


def test_reopen_writes_change_row(client, signed_in, proposal):
    user = signed_in("annotator", "anna")
    review.accept(proposal.pk, user=user, version=1)
    rows = Rows()

    response = _post_json(client, f"/api/instances/{proposal.pk}/reopen/", {"version": 2})

    assert response.status_code == 200
    assert rows.get() == [("anna", "change", "instance", proposal.pk, proposal.slide_id)]
    assert rows.events()[0].detail["change"] == "reopen"


def test_version_conflict_writes_no_row(client, signed_in, proposal):
    signed_in("annotator")
    review.accept(proposal.pk, user=None, version=1)
    rows = Rows()

    response = _post_json(client, f"/api/instances/{proposal.pk}/reject/", {"version": 1})

    assert response.status_code == 409
    assert rows.get() == []


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("edit", {"geometry": {"type": "Point", "coordinates": [1, 1]}}),
        ("relabel", {"class_name": "tumour"}),
        ("reopen", {}),
        ("accept", {"version": 0}),
    ],
)
def test_invalid_change_writes_no_row(client, signed_in, proposal, action, body):
    signed_in("annotator")
    rows = Rows()

    response = _post_json(client, f"/api/instances/{proposal.pk}/{action}/", {"version": 1, **body})

    assert response.status_code == 400, response.content
    assert rows.get() == []
    assert Instance.objects.get(pk=proposal.pk).version == 1


def test_draw_writes_create_row(client, signed_in, slide):
    signed_in("annotator", "anna")
    rows = Rows()

    response = _post_json(
        client, f"/api/slides/{slide.pk}/draw/", {"geometry": SQUARE, "class_name": "glomerulus"}
    )

    assert response.status_code == 201, response.content
    instance_id = response.json()["id"]
    assert rows.get() == [("anna", "create", "instance", instance_id, slide.pk)]
    assert rows.events()[0].detail["class_name"] == "glomerulus"


def test_prompt_writes_create_row(client, signed_in, file_slide, fast_proposals):
    prompting._segmenters.clear()
    signed_in("annotator", "anna")
    rows = Rows()

    response = _post_json(
        client, f"/api/slides/{file_slide.pk}/prompt/",
        {"point_level0": [1100, 1500], "class_name": "glomerulus"},
    )
    prompting._segmenters.clear()

    if response.status_code == 422:
        pytest.fail(f"tiny SAM found nothing at the click: {response.json()['detail']}")
    assert response.status_code == 201, response.content
    assert rows.get() == [("anna", "create", "instance", response.json()["id"], file_slide.pk)]


def test_draw_outside_slide_writes_no_row(client, signed_in, slide):
    signed_in("annotator")
    rows = Rows()

    outside = box(-50, -50, 10, 10).__geo_interface__
    response = _post_json(
        client, f"/api/slides/{slide.pk}/draw/", {"geometry": outside, "class_name": "glomerulus"}
    )

    assert response.status_code == 400
    assert rows.get() == []


def test_delete_writes_delete_row(client, signed_in, proposal):
    signed_in("admin", "ada")
    rows = Rows()

    response = client.delete(f"/api/instances/{proposal.pk}/?version=1")

    assert response.status_code == 204
    assert rows.get() == [("ada", "delete", "instance", proposal.pk, proposal.slide_id)]


def test_undo_rows_name_the_effect(client, signed_in, slide, proposal):
    signed_in("admin", "ada")
    other = create_instance_record(slide, box(300, 300, 400, 400), "", state="pending", source="sam")
    drawn = _post_json(
        client, f"/api/slides/{slide.pk}/draw/", {"geometry": SQUARE, "class_name": "vessel"}
    ).json()["id"]
    _post_json(client, f"/api/instances/{other.pk}/relabel/", {"version": 1, "class_name": "glomerulus"})
    assert client.delete(f"/api/instances/{proposal.pk}/?version=1").status_code == 204
    rows = Rows()

    for _ in range(3):
        response = _post_json(client, f"/api/slides/{slide.pk}/undo/")
        assert response.status_code == 200, response.content

    assert rows.get() == [
        ("ada", "create", "instance", proposal.pk, slide.pk),
        ("ada", "change", "instance", other.pk, slide.pk),
        ("ada", "delete", "instance", drawn, slide.pk),
    ]
    assert [event.detail["undone_change"] for event in rows.events()] == ["delete", "relabel", "draw"]
    assert {event.detail["change"] for event in rows.events()} == {"undo"}


def test_undo_with_nothing_to_undo_writes_no_row(client, signed_in, slide):
    signed_in("annotator")
    rows = Rows()

    assert _post_json(client, f"/api/slides/{slide.pk}/undo/").status_code == 400
    assert rows.get() == []


def test_evaluation_regions_write_create_and_delete(client, signed_in, slide):
    signed_in("pathologist", "pat")
    rows = Rows()

    created = _post_json(client, f"/api/slides/{slide.pk}/evaluation-regions/", {"geometry": SQUARE})
    region_id = created.json()["id"]
    deleted = client.delete(f"/api/evaluation-regions/{region_id}/")

    assert (created.status_code, deleted.status_code) == (201, 204)
    assert not EvaluationRegion.objects.exists()
    assert rows.get() == [
        ("pat", "create", "evaluation_region", region_id, slide.pk),
        ("pat", "delete", "evaluation_region", region_id, slide.pk),
    ]


def test_invalid_evaluation_region_writes_no_row(client, signed_in, slide):
    signed_in("annotator")
    rows = Rows()

    response = _post_json(client, f"/api/slides/{slide.pk}/evaluation-regions/", {"geometry": None})

    assert response.status_code == 400
    assert rows.get() == []


def test_assignments_write_create_and_delete(client, signed_in, make_user, slide):
    signed_in("pathologist", "pat")
    make_user("annotator", username="anna")
    rows = Rows()

    created = _post_json(client, "/api/review/assignments/", {"slide": slide.pk, "reviewer": "anna"})
    again = _post_json(client, "/api/review/assignments/", {"slide": slide.pk, "reviewer": "anna"})
    assignment_id = created.json()["id"]
    deleted = client.delete(f"/api/review/assignments/{assignment_id}/")

    assert (created.status_code, again.status_code, deleted.status_code) == (201, 400, 204)
    assert not SlideAssignment.objects.exists()
    assert rows.get() == [
        ("pat", "create", "slide_assignment", assignment_id, slide.pk),
        ("pat", "delete", "slide_assignment", assignment_id, slide.pk),
    ]
    assert [event.detail for event in rows.events()] == [{"reviewer": "anna"}, {"reviewer": "anna"}]


def test_assign_page_writes_create_row(client, signed_in, make_user, slide):
    signed_in("pathologist", "pat")
    make_user("annotator", username="anna")
    rows = Rows()

    response = client.post("/review/assign/", {"slide": slide.pk, "reviewer": "anna"})

    assert response.status_code == 302
    assignment = SlideAssignment.objects.get()
    assert rows.get() == [("pat", "create", "slide_assignment", assignment.pk, slide.pk)]


# ---------------------------------------------------------------------------- imports


def _geojson_upload(class_name: str) -> SimpleUploadedFile:
    collection = {"type": "FeatureCollection", "features": [{
        "type": "Feature",
        "geometry": box(10, 10, 60, 60).__geo_interface__,
        "properties": {"objectType": "annotation", "classification": {"name": class_name}},
    }, {
        "type": "Feature",
        "geometry": box(100, 10, 160, 60).__geo_interface__,
        "properties": {"objectType": "annotation", "classification": {"name": class_name}},
    }]}
    return SimpleUploadedFile("outlines.geojson", json.dumps(collection).encode())


def test_annotation_import_writes_one_import_row(client, signed_in, slide):
    signed_in("admin", "ada")
    rows = Rows()

    response = client.post(
        f"/api/slides/{slide.pk}/annotation-imports/", {"file": _geojson_upload("Glomerulus")}
    )

    assert response.status_code == 201, response.content
    assert Instance.objects.filter(slide=slide).count() == 2
    assert rows.get() == [("ada", "import", "slide", slide.pk, slide.pk)]
    assert rows.events()[0].detail == {"source": "outlines.geojson", "format": "geojson", "created": 2}


def test_rejected_annotation_import_writes_no_row(client, signed_in, slide):
    signed_in("admin")
    rows = Rows()

    response = client.post(
        f"/api/slides/{slide.pk}/annotation-imports/", {"file": _geojson_upload("Tumour")}
    )

    assert response.status_code == 400
    assert rows.get() == []


def test_slide_upload_and_delete_rows(client, signed_in, shared_data, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    signed_in("admin", "ada")
    rows = Rows()
    content = (shared_data / "wsi" / "cmu-1-small-region.svs").read_bytes()

    uploaded = client.post("/api/slides/", {"file": SimpleUploadedFile("cmu.svs", content)})
    slide_id = uploaded.json()["id"]
    deleted = client.delete(f"/api/slides/{slide_id}/")

    assert (uploaded.status_code, deleted.status_code) == (201, 204)
    assert rows.get() == [
        ("ada", "upload", "slide", slide_id, slide_id),
        ("ada", "delete", "slide", slide_id, slide_id),
    ]
    assert rows.events()[0].detail == {"name": "cmu", "original_filename": "cmu.svs"}


def test_rejected_upload_writes_no_row(client, signed_in, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    signed_in("admin")
    rows = Rows()

    response = client.post(
        "/api/slides/", {"file": SimpleUploadedFile("notes.svs", b"not a slide\n" * 100)}
    )

    assert response.status_code == 400
    assert not Slide.objects.exists()
    assert rows.get() == []


@pytest.fixture
def staff_admin(client, signed_in):
    """Sign in as an admin who may use the admin site."""
    user = signed_in("admin", "ada")
    user.is_staff = True
    user.save()
    client.defaults["HTTP_HOST"] = "127.0.0.1"
    return user


def test_admin_site_slide_change_writes_change_row(client, staff_admin, slide):
    rows = Rows()
    data = {}
    for name, value in model_to_dict(slide).items():
        if isinstance(value, (list, dict)):
            data[name] = json.dumps(value)
        elif value is not None:
            data[name] = value
    data["patient_id"] = "P2"

    response = client.post(f"/admin/slides/slide/{slide.pk}/change/", data)

    assert response.status_code == 302, response.content[:2000]
    assert Slide.objects.get(pk=slide.pk).patient_id == "P2"
    assert rows.get() == [("ada", "change", "slide", slide.pk, slide.pk)]
    detail = rows.events()[0].detail
    assert detail["via"] == "admin site"
    assert "patient_id" in detail["fields"]


def test_admin_site_slide_delete_writes_delete_row(client, staff_admin, slide):
    rows = Rows()

    response = client.post(f"/admin/slides/slide/{slide.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Slide.objects.exists()
    assert rows.get() == [("ada", "delete", "slide", slide.pk, slide.pk)]


def test_admin_site_bulk_delete_writes_row_per_slide(client, staff_admin, slide):
    other = create_slide_record("other")
    rows = Rows()

    response = client.post("/admin/slides/slide/", {
        "action": "delete_selected", "_selected_action": [slide.pk, other.pk], "post": "yes",
    })

    assert response.status_code == 302
    assert not Slide.objects.exists()
    assert sorted(rows.get()) == [
        ("ada", "delete", "slide", slide.pk, slide.pk),
        ("ada", "delete", "slide", other.pk, other.pk),
    ]


def test_import_slides_command_writes_import_row(shared_data):
    rows = Rows()

    call_command("import_slides", str(shared_data / "wsi" / "cmu-1-small-region.svs"))

    slide = Slide.objects.get()
    assert rows.get() == [("", "import", "slide", slide.pk, slide.pk)]


def test_report_entry_rows(client, signed_in, slide):
    signed_in("pathologist", "pat")
    rows = Rows()

    for value in ["7.5", "9", ""]:
        client.post("/dashboard/patient-reports/", {
            "cohort": "C1", "patient_id": "P1", "report_ifta_pct": value,
        })

    assert not PatientReport.objects.exists()
    report_ids = {event.target_id for event in rows.events()}
    assert len(report_ids) == 1
    report_id = report_ids.pop()
    assert rows.get() == [
        ("pat", "create", "patient_report", report_id, None),
        ("pat", "change", "patient_report", report_id, None),
        ("pat", "delete", "patient_report", report_id, None),
    ]
    assert rows.events()[1].detail == {"cohort": "C1", "patient_id": "P1", "report_ifta_pct": 9.0}


def test_invalid_report_entry_writes_no_row(client, signed_in, slide):
    signed_in("pathologist")
    rows = Rows()

    client.post("/dashboard/patient-reports/", {
        "cohort": "C1", "patient_id": "P1", "report_ifta_pct": "120",
    })
    client.post("/dashboard/patient-reports/", {
        "cohort": "C1", "patient_id": "P1", "report_ifta_pct": "",
    })

    assert rows.get() == []


def test_report_import_writes_one_row(client, signed_in, slide):
    signed_in("pathologist", "pat")
    rows = Rows()
    upload = SimpleUploadedFile("reports.csv", b"patient,section,report_ifta_pct\nP1,1,42\nP1,,40\n")

    client.post("/dashboard/report-imports/", {"file": upload})

    assert rows.get() == [("pat", "import", "report_file", None, None)]
    assert rows.events()[0].detail == {
        "file_name": "reports.csv", "slide_reports": 1, "patient_reports": 1,
    }


def test_invalid_report_import_writes_no_row(client, signed_in, slide):
    signed_in("pathologist")
    rows = Rows()
    upload = SimpleUploadedFile("reports.csv", b"patient,report_ifta_pct\nP9,42\n")

    client.post("/dashboard/report-imports/", {"file": upload})

    assert rows.get() == []
    assert not PatientReport.objects.exists()


def test_import_reports_command_has_no_user(slide, tmp_path):
    path = tmp_path / "reports.csv"
    path.write_text("patient,report_ifta_pct\nP1,12\n", encoding="utf-8")
    rows = Rows()

    call_command("import_reports", str(path))

    assert rows.get() == [("", "import", "report_file", None, None)]


# ---------------------------------------------------------------------------- exports


@pytest.mark.parametrize(
    ("url", "file_name"),
    [
        ("/api/slides/{slide}/export.geojson", "slide-{slide}.geojson"),
        ("/api/slides/{slide}/export.csv", "slide-{slide}-counts.csv"),
        ("/api/slides/{slide}/readouts.csv", "slide-{slide}-readouts.csv"),
    ],
)
def test_slide_export_writes_export_row(client, signed_in, slide, url, file_name):
    signed_in("pathologist", "pat")
    rows = Rows()

    response = client.get(url.format(slide=slide.pk))

    assert response.status_code == 200
    assert rows.get() == [("pat", "export", "slide", slide.pk, slide.pk)]
    assert rows.events()[0].detail == {"file_name": file_name.format(slide=slide.pk)}


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("/api/export/cohort.csv", {"file_name": "cohort-counts.csv"}),
        ("/api/export/reviewers.csv", {"file_name": "cohort-reviewers.csv"}),
        ("/api/export/readouts.csv", {"file_name": "readouts-all-cohorts.csv", "cohort": ""}),
        ("/api/export/readouts.csv?cohort=C1", {"file_name": "readouts-c1.csv", "cohort": "C1"}),
        ("/dashboard/agreement-scatter.png?download=1", {
            "file_name": "agreement-scatter-reviewed-all-cohorts.png", "source": "reviewed",
            "cohort": "",
        }),
        ("/dashboard/bland-altman.png?download=1&cohort=C1", {
            "file_name": "bland-altman-reviewed-c1.png", "source": "reviewed", "cohort": "C1",
        }),
    ],
)
def test_cohort_export_writes_export_row(client, signed_in, slide, url, detail):
    signed_in("pathologist", "pat")
    rows = Rows()

    response = client.get(url)

    assert response.status_code == 200
    assert rows.get() == [("pat", "export", "cohort", None, None)]
    assert rows.events()[0].detail == detail


def test_inline_dashboard_figures_are_not_logged(client, signed_in, slide):
    signed_in("pathologist")
    rows = Rows()

    assert client.get("/dashboard/").status_code == 200
    assert client.get("/dashboard/agreement-scatter.png").status_code == 200
    assert client.get("/dashboard/bland-altman.png").status_code == 200

    assert rows.get() == []


def test_refused_export_writes_no_row(client, signed_in, slide):
    signed_in("annotator")
    rows = Rows()

    assert client.get(f"/api/slides/{slide.pk}/export.geojson").status_code == 403
    assert client.get("/api/export/readouts.csv?cohort=nowhere").status_code == 403

    assert rows.get() == []


def test_unknown_cohort_export_writes_no_row(client, signed_in, slide):
    signed_in("pathologist")
    rows = Rows()

    assert client.get("/api/export/readouts.csv?cohort=nowhere").status_code == 400

    assert rows.get() == []


# ---------------------------------------------------------------------------- runs


def test_proposal_run_writes_propose_row(client, signed_in, slide):
    signed_in("annotator", "anna")
    rows = Rows()

    response = _post_json(client, f"/api/slides/{slide.pk}/proposal-runs/", {})

    assert response.status_code == 201, response.content
    assert rows.get() == [("anna", "propose", "proposal_run", response.json()["id"], slide.pk)]


def test_invalid_proposal_settings_write_no_row(client, signed_in, slide):
    signed_in("annotator")
    rows = Rows()

    response = _post_json(
        client, f"/api/slides/{slide.pk}/proposal-runs/", {"settings": {"points_per_side": 0}}
    )

    assert response.status_code == 400
    assert rows.get() == []


def test_segmentation_run_writes_segment_row(client, signed_in, slide, model_version):
    signed_in("annotator", "anna")
    rows = Rows()

    response = _post_json(
        client, f"/api/slides/{slide.pk}/proposal-runs/", {"model_version": model_version.pk}
    )

    assert response.status_code == 201, response.content
    assert rows.get() == [("anna", "segment", "proposal_run", response.json()["id"], slide.pk)]
    assert rows.events()[0].detail == {
        "model_version": model_version.pk, "model_version_name": "audited-model",
    }


def test_training_rows(client, signed_in, slide):
    signed_in("admin", "ada")
    create_instance_record(slide, box(100, 100, 200, 200), "glomerulus")
    rows = Rows()

    snapshot = _post_json(client, "/api/training/snapshots/", {"seed": 0}).json()["id"]
    version = _post_json(client, "/api/training/versions/", {"snapshot": snapshot}).json()["id"]
    cancelled = _post_json(client, f"/api/training/versions/{version}/cancel/")
    cancelled_again = _post_json(client, f"/api/training/versions/{version}/cancel/")

    assert (cancelled.status_code, cancelled_again.status_code) == (200, 409)
    assert rows.get() == [
        ("ada", "snapshot", "training_snapshot", snapshot, None),
        ("ada", "train", "model_version", version, None),
        ("ada", "cancel", "model_version", version, None),
    ]
    assert rows.events()[1].detail["snapshot"] == snapshot
    assert rows.events()[2].detail["status"] == "cancelled"


def test_invalid_training_requests_write_no_row(client, signed_in, slide):
    signed_in("admin")
    rows = Rows()

    empty_snapshot = _post_json(client, "/api/training/snapshots/", {"seed": 0})
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    bad_version = _post_json(
        client, "/api/training/versions/", {"snapshot": snapshot.pk, "config": {"epochs": 0}}
    )

    assert (empty_snapshot.status_code, bad_version.status_code) == (400, 400)
    assert rows.get() == []


def test_evaluation_api_and_page_write_evaluate_rows(client, signed_in, slide, model_version):
    signed_in("admin", "ada")
    review.add_evaluation_region(slide, user=None, geometry=box(0, 0, 500, 500).__geo_interface__)
    rows = Rows()

    response = _post_json(client, f"/api/model-versions/{model_version.pk}/evaluations/")
    page = client.post(f"/models/{model_version.pk}/evaluate/")

    assert (response.status_code, page.status_code) == (202, 302)
    evaluation_ids = [event.target_id for event in rows.events()]
    assert evaluation_ids[0] == response.json()["id"]
    assert rows.get() == [
        ("ada", "evaluate", "model_evaluation", evaluation_ids[0], None),
        ("ada", "evaluate", "model_evaluation", evaluation_ids[1], None),
    ]
    assert rows.events()[0].detail == {
        "model_version": model_version.pk, "model_version_name": "audited-model",
    }


def test_evaluation_without_regions_writes_no_row(client, signed_in, model_version):
    signed_in("admin")
    rows = Rows()

    response = _post_json(client, f"/api/model-versions/{model_version.pk}/evaluations/")
    client.post(f"/models/{model_version.pk}/evaluate/")

    assert response.status_code == 400
    assert rows.get() == []


# ---------------------------------------------------------------------------- sign-in


def test_sign_in_success_failure_and_sign_out(client, make_user):
    alice = make_user("annotator", username="alice")
    rows = Rows()

    wrong = client.post("/login/", {"username": "alice", "password": "wrong password"})
    unknown = client.post("/login/", {"username": "=HYPERLINK(1)", "password": "x"})
    right = client.post("/login/", {"username": "alice", "password": PASSWORD})
    signed_out = client.post("/logout/")

    assert (wrong.status_code, unknown.status_code, right.status_code) == (200, 200, 302)
    assert signed_out.status_code == 302
    assert rows.get() == [
        ("alice", "login_failed", "user", alice.pk, None),
        ("=HYPERLINK(1)", "login_failed", "user", None, None),
        ("alice", "login", "user", alice.pk, None),
        ("alice", "logout", "user", alice.pk, None),
    ]
    events = rows.events()
    assert [event.user for event in events] == [None, None, alice, alice]
    assert {event.ip_address for event in events} == {"127.0.0.1"}
    assert all("password" not in json.dumps(event.detail) for event in events)


# ---------------------------------------------------------------------------- append-only


def test_model_rejects_update_and_delete(make_user):
    event = audit.record(audit.Action.VIEW, target_type=audit.Target.SLIDE, target_id=1, slide_id=1)

    event.action = audit.Action.DELETE
    with pytest.raises(AuditLogAppendOnlyError):
        event.save()
    with pytest.raises(AuditLogAppendOnlyError):
        event.delete()
    with pytest.raises(AuditLogAppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="delete")
    with pytest.raises(AuditLogAppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()

    assert AuditEvent.objects.get(pk=event.pk).action == "view"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger exists on PostgreSQL only")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE accounts_auditevent SET action = 'delete' WHERE id = %s",
        "UPDATE accounts_auditevent SET user_id = NULL, username = '' WHERE id = %s",
        "DELETE FROM accounts_auditevent WHERE id = %s",
    ],
)
def test_database_rejects_changes_to_rows(make_user, statement):
    user = make_user("admin", username="ada")
    event = audit.record(audit.Action.VIEW, user=user, target_type=audit.Target.SLIDE, target_id=1)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(statement, [event.pk])

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.action, stored.user, stored.username) == ("view", user, "ada")


def test_deleted_user_keeps_rows_by_name(make_user):
    user = make_user("annotator", username="leaver")
    event = audit.record(audit.Action.VIEW, user=user, target_type=audit.Target.SLIDE, target_id=1)

    user.delete()

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.user_id, stored.username, stored.action) == (None, "leaver", "view")


def test_page_marks_only_deleted_users(make_user, client_for):
    leaver = make_user("annotator", username="leaver")
    audit.record(audit.Action.VIEW, user=leaver, target_type=audit.Target.SLIDE, target_id=1)
    leaver.delete()
    make_user("annotator", username="stayer")
    audit.record(audit.Action.LOGIN_LOCKED, username="stayer", target_type=audit.Target.USER)
    audit.record(audit.Action.LOGIN_FAILED, username="stayer", target_type=audit.Target.USER)

    page = client_for("admin").get("/audit/").content.decode()

    assert 'leaver <span class="note">(deleted)</span>' in page
    assert "stayer (deleted)" not in page
    assert 'stayer <span class="note">(deleted)</span>' not in page
    assert page.count("stayer") >= 2


# ---------------------------------------------------------------------------- transactions


@pytest.mark.django_db(transaction=True)
def test_failed_audit_write_commits_no_change(make_user, monkeypatch):
    slide = create_slide_record()
    instance = create_instance_record(slide, box(100, 100, 200, 200), "", state="pending")
    reviewer = make_user("annotator")

    def failing_record(*args, **kwargs):
        raise DatabaseError("audit table unavailable")

    monkeypatch.setattr(audit, "record", failing_record)
    with pytest.raises(DatabaseError, match="audit table unavailable"):
        review.accept(instance.pk, user=reviewer, version=1)

    stored = Instance.objects.get(pk=instance.pk)
    assert (stored.review_state, stored.version) == ("pending", 1)
    assert not InstanceEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_rolled_back_change_leaves_no_audit_row(make_user, monkeypatch):
    slide = create_slide_record()
    instance = create_instance_record(slide, box(100, 100, 200, 200), "", state="pending")
    reviewer = make_user("annotator")
    rows = Rows()

    # Building the websocket message is the last step inside the change's transaction,
    # after the audit row is written.
    def failing_payload(*args, **kwargs):
        raise RuntimeError("message could not be built")

    monkeypatch.setattr(review.events, "instance_payload", failing_payload)
    with pytest.raises(RuntimeError, match="could not be built"):
        review.accept(instance.pk, user=reviewer, version=1)

    assert rows.get() == []
    assert Instance.objects.get(pk=instance.pk).version == 1


@pytest.mark.django_db(transaction=True)
def test_committed_change_has_its_row(make_user):
    slide = create_slide_record()
    instance = create_instance_record(slide, box(100, 100, 200, 200), "", state="pending")
    reviewer = make_user("annotator", username="anna")
    rows = Rows()

    review.accept(instance.pk, user=reviewer, version=1)

    assert rows.get() == [("anna", "change", "instance", instance.pk, slide.pk)]


# ---------------------------------------------------------------------------- reading the log


@pytest.fixture
def logged_events(make_user):
    """Five rows of two users on two slides and three days, written in time order."""
    anna = make_user("annotator", username="anna")
    pat = make_user("pathologist", username="pat")
    rows = [
        (anna, "view", 1, dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.timezone.utc)),
        (anna, "change", 1, dt.datetime(2025, 3, 1, 23, 59, tzinfo=dt.timezone.utc)),
        (pat, "export", 2, dt.datetime(2025, 3, 2, 0, 0, tzinfo=dt.timezone.utc)),
        (pat, "view", 2, dt.datetime(2025, 3, 3, 12, 0, tzinfo=dt.timezone.utc)),
        (anna, "change", 2, dt.datetime(2025, 3, 3, 13, 0, tzinfo=dt.timezone.utc)),
    ]
    for user, action, slide_id, created_at in rows:
        AuditEvent.objects.create(
            user=user, username=user.username, action=action, target_type="slide",
            target_id=slide_id, slide_id=slide_id, created_at=created_at,
        )


def _api_rows(client, query=""):
    response = client.get(f"/api/audit/events/?{query}")
    assert response.status_code == 200, response.content
    return [(row["username"], row["action"], row["slide_id"]) for row in response.json()["results"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("date_to=2025-12-31", [("anna", "change", 2), ("pat", "view", 2), ("pat", "export", 2),
                                ("anna", "change", 1), ("anna", "view", 1)]),
        ("user=anna", [("anna", "change", 2), ("anna", "change", 1), ("anna", "view", 1)]),
        ("action=view", [("pat", "view", 2), ("anna", "view", 1)]),
        ("slide=1", [("anna", "change", 1), ("anna", "view", 1)]),
        ("date_from=2025-03-02&date_to=2025-03-02", [("pat", "export", 2)]),
        ("date_to=2025-03-01", [("anna", "change", 1), ("anna", "view", 1)]),
        ("user=anna&action=change&date_from=2025-03-02", [("anna", "change", 2)]),
        ("user=nobody", []),
    ],
)
def test_api_filters_newest_first(client, signed_in, logged_events, query, expected):
    signed_in("admin", "ada")
    assert _api_rows(client, query) == expected


def test_api_pages(client, signed_in, logged_events):
    signed_in("admin")

    first = client.get("/api/audit/events/?slide=2&page_size=2").json()
    second = client.get("/api/audit/events/?slide=2&page_size=2&page=2").json()

    assert first["count"] == 3
    assert [row["action"] for row in first["results"]] == ["change", "view"]
    assert [row["action"] for row in second["results"]] == ["export"]
    assert "page=2" in first["next"]
    assert second["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [("action=peek", "action"), ("slide=abc", "slide"), ("date_from=March", "date_from"),
     ("date_from=2025-03-03&date_to=2025-03-01", "__all__")],
)
def test_api_rejects_invalid_filters(client, signed_in, query, field):
    signed_in("admin")

    response = client.get(f"/api/audit/events/?{query}")

    assert response.status_code == 400
    assert field in response.json()


def test_page_lists_filtered_rows_with_csv_link(client, signed_in, logged_events):
    signed_in("admin")

    response = client.get("/audit/?user=anna&slide=1")

    assert response.status_code == 200
    html = response.content.decode()
    assert "2 events." in html
    assert html.count("<tr data-event=") == 2
    assert "/api/audit/events.csv?user=anna&amp;slide=1" in html


def test_page_pages(client, signed_in, make_user):
    signed_in("admin")
    for index in range(55):
        audit.record(audit.Action.VIEW, target_type=audit.Target.SLIDE, target_id=index)

    first = client.get("/audit/?action=view").content.decode()
    second = client.get("/audit/?action=view&page=2").content.decode()

    assert "55 events, page 1 of 2." in first
    assert first.count("<tr data-event=") == 50
    assert second.count("<tr data-event=") == 5
    assert 'href="?action=view&amp;page=2">Older</a>' in first


def test_page_names_invalid_filter(client, signed_in):
    signed_in("admin")

    response = client.get("/audit/?date_from=2025-03-03&date_to=2025-03-01")

    assert response.status_code == 400
    assert "date_from 2025-03-03 is after date_to 2025-03-01" in response.content.decode()


def test_csv_holds_filtered_rows_and_logs_the_download(client, signed_in, logged_events):
    admin = signed_in("admin", "ada")
    audit.record(audit.Action.LOGIN_FAILED, username="=cmd|' /C calc'!A0", target_type="user")
    rows = Rows()

    response = client.get("/api/audit/events.csv?action=change")
    everything = client.get("/api/audit/events.csv?date_from=2020-01-01").content.decode()

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="audit-log.csv"'
    text = response.content.decode()
    assert text.startswith("\ufeff")
    table = list(csv.reader(io.StringIO(text[1:])))
    assert table[0] == CSV_COLUMNS
    assert [(row[1], row[3], row[6]) for row in table[1:]] == [
        ("anna", "change", "2"), ("anna", "change", "1"),
    ]
    assert table[1][0] == "2025-03-03T13:00:00+00:00"
    assert "'=cmd|' /C calc'!A0" in everything
    assert rows.get() == [("ada", "export", "audit_log", None, None)] * 2
    assert rows.events()[0].detail == {"file_name": "audit-log.csv", "filters": {"action": "change"}}
    assert rows.events()[0].user == admin


@pytest.mark.parametrize("role", ["annotator", "pathologist"])
def test_other_roles_get_the_refusal_message(client, signed_in, role):
    signed_in(role)
    expected = (
        "Your role does not allow this: it needs the right to read the audit log, which the "
        "admin role has. Ask an admin to give you that role."
    )

    page = client.get("/audit/")
    api = client.get("/api/audit/events/")
    download = client.get("/api/audit/events.csv")

    assert page.status_code == 403
    assert expected in page.content.decode()
    assert (api.status_code, download.status_code) == (403, 403)
    assert api.json()["detail"] == expected
    assert download.json()["detail"] == expected


def test_nav_link_for_admins_only(client, signed_in):
    signed_in("admin")
    assert 'href="/audit/"' in client.get("/").content.decode()
    client.logout()
    signed_in("pathologist")
    assert 'href="/audit/"' not in client.get("/").content.decode()


def test_superuser_reads_the_log(client):
    root = get_user_model().objects.create_superuser("root", password=PASSWORD)
    client.force_login(root)

    assert client.get("/audit/").status_code == 200
    assert client.get("/api/audit/events/").status_code == 200
