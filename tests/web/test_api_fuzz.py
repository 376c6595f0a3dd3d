"""API fuzz run: schemathesis sends generated and mutated requests to every operation of
the OpenAPI schema that /api/schema/ serves, on a real daphne server on 127.0.0.1.

Checks of the signed-in runs: no 5xx and no traceback in the server log, every status
code documented, a JSON body wherever the schema documents JSON, and every body matching
its documented schema. The anonymous run must get 401 or 403 from every operation. A
multipart body that daphne's HTTP layer rejects before the app receives it is exempt
(see the Limitation below).

No model runs. The server's SAM checkpoint is a missing file, so a SAM prompt fails at
once with a 400 that names the file. Tasks that a request starts (proposals,
segmentation, training, evaluation) only go into this test's Redis queue, which no
worker reads and the fixture empties afterwards.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from shapely.geometry import box

from apps.analysis.models import ModelEvaluation
from apps.annotations.models import EvaluationRegion, ProposalRun
from apps.review.models import SlideAssignment
from apps.slides.services import import_slide
from apps.training import snapshots
from apps.training.models import ModelVersion
from tests.conftest import create_instance_record
from tests.processes import child_environment, web_server

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-for-tests-1"
# Generated requests per operation in the fuzzing phase. With the examples and coverage
# phases, the two signed-in passes send about 2 500 requests in all.
FUZZ_EXAMPLES = 25
ANONYMOUS_EXAMPLES = 5
SIGNED_IN_CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance,
]


@dataclass
class FuzzTarget:
    """A running server with data, and a requests session signed in as an admin."""

    base_url: str
    session: requests.Session
    log_path: Path
    ids: dict
    log_offset: int = 0

    def new_tracebacks(self) -> list[str]:
        """Return the server log lines since the last call that start a traceback."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_offset)
            text = log.read().decode("utf-8", "replace")
        self.log_offset += len(text.encode("utf-8", "replace"))
        return [
            line for line in text.splitlines()
            if "Traceback" in line or "Internal Server Error" in line
        ]


def _create_objects(shared_data, make_user) -> dict:
    """Create one of each object that a path parameter names, on the real small CMU slide."""
    slide = import_slide(shared_data / "wsi" / "cmu-1-small-region.svs")
    admin = make_user("admin", username="fuzz-admin")
    instances = [
        create_instance_record(slide, box(100 + 60 * i, 100, 140 + 60 * i, 140), "proximal tubule")
        for i in range(4)
    ]
    create_instance_record(slide, box(400, 400, 460, 460), "", state="pending", source="sam")
    run = ProposalRun.objects.create(slide=slide, sam_type="vit_b")
    region = EvaluationRegion.objects.create(
        slide=slide, geometry=box(0, 0, 1000, 1000).__geo_interface__, created_by=admin
    )
    assignment = SlideAssignment.objects.create(
        slide=slide, reviewer=make_user("annotator", username="fuzz-annotator"), assigned_by=admin
    )
    snapshot = snapshots.build_snapshot(admin, seed=0, validation_fraction=0.0)
    version = ModelVersion.objects.create(
        name="fuzz-queued", snapshot=snapshot, mpp=1.0, crop_px=256,
        class_names=list(snapshot.class_names), created_by=admin,
    )
    evaluation = ModelEvaluation.objects.create(
        model_version=version, status=ModelEvaluation.Status.FAILED, created_by=admin,
    )
    return {
        "slide_id": slide.pk, "instance_id": instances[0].pk, "run_id": run.pk,
        "region_id": region.pk, "assignment_id": assignment.pk, "version_id": version.pk,
        "evaluation_id": evaluation.pk, "snapshot_id": snapshot.pk,
    }


def _sign_in(base_url: str, username: str) -> requests.Session:
    """Sign in through the login form. Unsafe requests then carry the CSRF token header."""
    session = requests.Session()
    session.get(f"{base_url}/login/").raise_for_status()
    response = session.post(
        f"{base_url}/login/",
        data={"username": username, "password": PASSWORD,
              "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    assert "sessionid" in session.cookies
    session.headers["X-CSRFToken"] = session.cookies["csrftoken"]
    return session


@pytest.fixture
def fuzz_target(transactional_db, redis_url, tmp_path, shared_data, make_user):
    """A daphne server on the test database with one of each object and a signed-in admin."""
    ids = _create_objects(shared_data, make_user)
    env = child_environment(
        tmp_path,
        REDIS_URL=redis_url,
        NEPHROWEB_SAM_CHECKPOINT=str(tmp_path / "absent" / "sam_vit_b.pth"),
        NEPHROWEB_SAM_DOWNLOAD_BASE_URL="",
    )
    log_path = tmp_path / "web.log"
    try:
        with web_server(env, log_path) as base_url:
            yield FuzzTarget(base_url, _sign_in(base_url, "fuzz-admin"), log_path, ids)
    finally:
        # Drop the tasks the requests queued, so that no later worker test takes them.
        redis.Redis.from_url(redis_url).flushdb()


@pytest.fixture(scope="module")
def bare_server(django_db_setup, tmp_path_factory):
    """URL of a daphne server on the test database, for requests that need no data."""
    data_dir = tmp_path_factory.mktemp("bare_server")
    with web_server(child_environment(data_dir), data_dir / "web.log") as base_url:
        yield base_url


def _load_schema(target: FuzzTarget, max_examples: int, mode: str):
    response = target.session.get(f"{target.base_url}/api/schema/")
    assert response.status_code == 200, response.text[:500]
    config = schemathesis.Config.from_dict({
        "generation": {
            "mode": mode,
            "max-examples": max_examples,
            "no-shrink": True,
            "database": "none",
            # The session cookie comes from the signed-in session, never from generation.
            "with-security-parameters": False,
        },
    })
    schema = schemathesis.openapi.from_dict(response.json(), config=config)
    schema.config.update(base_url=target.base_url)
    return schema


def _rejected_by_twisted(response) -> bool:
    """Tell whether daphne's HTTP layer rejected a multipart body before the app received it.

    Twisted returns an empty 400 for such a request (see the Limitation below).
    """
    sent_type = response.request.headers.get("Content-Type", "")
    return (
        sent_type.startswith("multipart/form-data")
        and response.status_code == 400
        and response.content == b""
    )


def _mixed_with(values, real: dict):
    """Draw each value of ``values`` whose name is in ``real`` as itself or the real one."""
    if not isinstance(values, dict):
        return st.just(values)
    return st.fixed_dictionaries({
        name: st.sampled_from([value, real[name]]) if name in real else st.just(value)
        for name, value in values.items()
    })


def _mix_in_real_ids(schema, ids: dict) -> None:
    """Make ids in paths, queries and bodies name real objects in about half of the requests.

    Random ids alone would stop most requests at a 404 or an "invalid pk" 400. The
    coverage phase builds its cases without these hooks, so its ids stay as generated.
    """
    in_query = {"slide": ids["slide_id"], "model_version": ids["version_id"]}
    in_body = {
        "slide": ids["slide_id"], "reviewer": "fuzz-annotator", "snapshot": ids["snapshot_id"],
        "parent": ids["snapshot_id"], "base_version": ids["version_id"],
        "model_version": ids["version_id"],
    }

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        return _mixed_with(path_parameters, ids)

    @schema.hook
    def flatmap_query(context, query):
        return _mixed_with(query, in_query)

    @schema.hook
    def flatmap_body(context, body):
        return _mixed_with(body, in_body)


@pytest.fixture
def signed_in_schema(fuzz_target):
    schema = _load_schema(fuzz_target, FUZZ_EXAMPLES, "all")
    _mix_in_real_ids(schema, fuzz_target.ids)
    return schema


@pytest.fixture
def anonymous_schema(fuzz_target):
    # Valid requests only: a path whose id is not an integer matches no route (404).
    return _load_schema(fuzz_target, ANONYMOUS_EXAMPLES, "positive")


# Deletions run in a test of their own, on fresh objects, so that the other operations
# find the objects that a deletion would remove.
signed_in = schemathesis.pytest.from_fixture("signed_in_schema")
anonymous = schemathesis.pytest.from_fixture("anonymous_schema")


def _call_signed_in(case, target: FuzzTarget) -> None:
    response = case.call(session=target.session)
    tracebacks = target.new_tracebacks()
    if not _rejected_by_twisted(response):
        case.validate_response(response, checks=SIGNED_IN_CHECKS)
    assert tracebacks == []


@signed_in.exclude(method="DELETE").parametrize()
def test_signed_in_requests_get_documented_answers(case, fuzz_target):
    _call_signed_in(case, fuzz_target)


@signed_in.include(method="DELETE").parametrize()
def test_signed_in_deletions_get_documented_answers(case, fuzz_target):
    _call_signed_in(case, fuzz_target)


# Limitation: daphne (Twisted) returns an empty 400 for multipart without a boundary or parts.
def test_unparsable_multipart_gets_bare_400(bare_server):
    without_boundary = requests.post(
        f"{bare_server}/api/slides/", data=b"name=x",
        headers={"Content-Type": "multipart/form-data"},
    )
    without_parts = requests.post(
        f"{bare_server}/api/training/snapshots/", data=b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )

    for response in (without_boundary, without_parts):
        assert response.status_code == 400
        assert response.content == b""
        assert "Content-Type" not in response.headers


def test_unknown_api_path_gets_json_404(bare_server):
    response = requests.get(f"{bare_server}/api/slides/not-an-id/")

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {
        "detail": "No API endpoint or object matches /api/slides/not-an-id/. /api/schema/ "
                  "lists the paths and the types of their parameters."
    }


def test_unknown_page_gets_html_404(bare_server):
    response = requests.get(f"{bare_server}/slides/not-an-id/")

    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/html")


@anonymous.parametrize()
def test_anonymous_requests_get_403(case, fuzz_target):
    response = case.call(session=requests.Session())
    if not _rejected_by_twisted(response):
        assert response.status_code in (401, 403), response.text[:300]
        assert response.headers["content-type"] == ["application/json"]
    assert fuzz_target.new_tracebacks() == []
