"""OpenAPI pieces of the client-secret API (drf-spectacular): the OpenAI response shape and the
error body every endpoint answers with."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

_ERROR_DESCRIPTIONS = {
    400: "Invalid request: `param` names the offending field (dotted path).",
    401: "Missing, malformed, unknown, revoked or expired API key.",
    403: "The key lacks the scope, or the tenant is suspended.",
    404: "No such object (another tenant's objects look the same as missing ones).",
    409: "A request with the same Idempotency-Key is still in flight; retry shortly.",
    413: "Request body over the size limit.",
    422: "The Idempotency-Key was used with a different body.",
    429: "Rate limit (`type: requests`, with Retry-After) or quota used up (`type: insufficient_quota`).",
    500: "Unexpected error; the message carries the request id.",
    502: "OpenAI failed or could not be reached after retries.",
    503: "A dependency (the rate-limit store) is unavailable; see Retry-After.",
}


class ErrorDetail(serializers.Serializer[Any]):
    message = serializers.CharField()
    type = serializers.CharField(
        help_text="e.g. invalid_request_error, requests, insufficient_quota, server_error"
    )
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorResponse(serializers.Serializer[Any]):
    """OpenAI's error shape."""

    error = ErrorDetail()


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    return {
        status: OpenApiResponse(response=ErrorResponse, description=_ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


class ClientSecretCreateResponse(serializers.Serializer[Any]):
    value = serializers.CharField(
        help_text="The secret: an OpenAI ephemeral key `ek_…` (kind upstream) or a relay token "
        "`rtp_rt_…` (kind relay). Shown once; only a fingerprint is stored."
    )
    expires_at = serializers.IntegerField(
        help_text="Unix seconds after which no new session can open with it."
    )
    session = serializers.JSONField(help_text="The effective session, in OpenAI's session object shape.")
