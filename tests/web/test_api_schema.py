"""The OpenAPI schema that drf-spectacular builds from the API views."""

import json

import pytest
from django.core.management import call_command
from django.urls import get_resolver

# API routes that are plain Django views serving JPEG images, so not in the schema.
IMAGE_ROUTES = {"api-tile", "api-thumbnail"}


def _schema(tmp_path) -> dict:
    path = tmp_path / "schema.json"
    call_command("spectacular", "--format", "openapi-json", "--file", str(path))
    return json.loads(path.read_text())


def test_schema_generation_has_no_warnings(tmp_path):
    path = tmp_path / "schema.json"

    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json",
        "--file", str(path),
    )

    schema = json.loads(path.read_text())
    assert schema["openapi"] == "3.0.3"
    assert schema["info"]["title"] == "nephroweb API"


def test_schema_lists_every_api_route(tmp_path):
    documented = set(_schema(tmp_path)["paths"])

    resolver = get_resolver()
    routes = {
        name: "/" + resolver.reverse_dict.getlist(name)[0][0][0][0]
        for name in resolver.reverse_dict
        if isinstance(name, str) and name.startswith("api-")
        and name not in IMAGE_ROUTES | {"api-schema"}
    }
    # Django writes a route's parameters as %(name)s, OpenAPI as {name}.
    openapi_routes = {
        name: route.replace("%(", "{").replace(")s", "}") for name, route in routes.items()
    }

    missing = sorted(name for name, route in openapi_routes.items() if route not in documented)
    assert missing == []
    assert len(documented) == len(routes)


def test_every_operation_documents_403_and_path_404(tmp_path):
    schema = _schema(tmp_path)

    for route, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "403" in operation["responses"], f"{method} {route}"
            if "{" in route:
                assert "404" in operation["responses"], f"{method} {route}"


@pytest.mark.django_db
def test_schema_served_as_json_to_signed_in_user(client_for):
    response = client_for("annotator").get("/api/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = json.loads(response.content)
    assert "/api/slides/{slide_id}/instances/" in schema["paths"]
    viewport = schema["paths"]["/api/slides/{slide_id}/instances/"]["get"]
    assert [p["name"] for p in viewport["parameters"] if p["in"] == "query"] == ["bbox", "limit"]


@pytest.mark.django_db
def test_schema_refused_to_anonymous(client):
    response = client.get("/api/schema/")

    assert response.status_code == 403
    assert json.loads(response.content) == {
        "detail": "Authentication credentials were not provided."
    }
