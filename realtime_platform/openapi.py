"""OpenAPI (drf-spectacular) pieces shared by every API: OpenAI's error body, and a hook that
documents the errors every operation can answer with, so no endpoint's schema omits them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    400: "Invalid request: `param` names the offending field (a dotted path).",
    401: "Missing, malformed, unknown, revoked or expired API key.",
    403: "The key lacks the scope this endpoint needs, or the tenant is suspended.",
    404: "No such object (another tenant's objects look the same as missing ones).",
    409: "A request with the same Idempotency-Key is still in flight; retry shortly.",
    413: "Request body over the size limit.",
    422: "The Idempotency-Key was already used with a different body.",
    429: "Rate limit (`type: requests`, with Retry-After) or quota used up (`type: insufficient_quota`).",
    500: "Unexpected error; the message carries the request id.",
    502: "OpenAI failed or could not be reached after retries.",
    503: "A dependency (the rate-limit store) is unavailable; see Retry-After.",
}


class ErrorDetail(serializers.Serializer[Any]):
    message = serializers.CharField()
    type = serializers.CharField(
        help_text="invalid_request_error, requests, insufficient_quota or server_error"
    )
    param = serializers.CharField(allow_null=True, help_text="Dotted path of the offending field.")
    code = serializers.CharField(allow_null=True)


class ErrorResponse(serializers.Serializer[Any]):
    """OpenAI's error shape, which every API error uses."""

    error = ErrorDetail()


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        status: OpenApiResponse(response=ErrorResponse, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape, which every API error uses.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: every API operation documents 401/403/500, 404 when its path
    names an object, and 400 when it takes a body or query parameters."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorResponse", _ERROR_SCHEMA)
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            statuses = [401, 403, 500]
            if "{" in path:
                statuses.append(404)
            if method in ("post", "put", "patch") or any(
                parameter.get("in") == "query" for parameter in operation.get("parameters", [])
            ):
                statuses.append(400)
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status], "content": ref})
    return result
