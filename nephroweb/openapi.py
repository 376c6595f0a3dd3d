"""OpenAPI schema parts that every app shares: the error bodies and the hook that lists them.

drf-spectacular builds the schema from the views (``manage.py spectacular`` or
/api/schema/). Each view declares its own success responses and any error status it
raises on purpose (409 on a version conflict, 422 when SAM finds nothing). The hook adds
the errors that every view of a kind can return:

- 403 on every operation, because every API view needs a signed-in user with a role and
  DRF's session authentication returns 403 to an anonymous request, not 401;
- 404 where the path has a parameter (an id that matches no row);
- 400 where the operation reads a request body or query parameters.
"""

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_REF = {"$ref": "#/components/schemas/Error"}
INVALID_REQUEST_REF = {"$ref": "#/components/schemas/InvalidRequest"}

# Body of a 400: "detail" for a rejected value, or one entry per invalid field with its
# messages (a list, or an object for a field of a nested serializer).
INVALID_REQUEST_SCHEMA = {
    "type": "object",
    "description": "'detail' with the message, or each invalid field with its messages.",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": {},
}

ERROR_DESCRIPTIONS = {
    "400": "The request is invalid; the body names the field and the problem.",
    "403": "Not signed in, or the role lacks the right; 'detail' names the role that has it.",
    "404": "No object has this id.",
}


class ErrorSerializer(serializers.Serializer):
    """Body of an error: the message, plus fields some errors add (e.g. the current object)."""

    detail = serializers.CharField()


def error_response(description: str) -> OpenApiResponse:
    """Document an error status that a view raises on purpose, with the shared error body."""
    return OpenApiResponse(response=ErrorSerializer, description=description)


def _error_codes(operation: dict) -> list[str]:
    locations = {parameter["in"] for parameter in operation.get("parameters", [])}
    codes = ["403"]
    if "path" in locations:
        codes.append("404")
    if "requestBody" in operation or "query" in locations:
        codes.append("400")
    return codes


def add_error_responses(result, generator, request, public):
    """Add the 400, 403 and 404 responses that a view did not declare itself (a hook)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    })
    schemas.setdefault("InvalidRequest", INVALID_REQUEST_SCHEMA)
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code in _error_codes(operation):
                body = INVALID_REQUEST_REF if code == "400" else ERROR_REF
                responses.setdefault(code, {
                    "description": ERROR_DESCRIPTIONS[code],
                    "content": {"application/json": {"schema": body}},
                })
    return result
