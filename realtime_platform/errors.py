"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a matching status.

Services raise `ApplicationError` subclasses; one DRF handler (and the Django-level handlers for
paths DRF never sees) renders every API error this way, so the official `openai` SDK raises its
usual classes (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
ConflictError, UnprocessableEntityError, RateLimitError, InternalServerError).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from django import db
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django_ratelimit.exceptions import Ratelimited
from rest_framework import exceptions as drf
from rest_framework.response import Response

from realtime_platform.context import current_request_id
from realtime_platform.redaction import redact_text
from upstream.errors import UpstreamError

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    status: int = 400
    error_type: str = "invalid_request_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        if error_type is not None:
            self.error_type = error_type
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def as_body(self) -> dict[str, Any]:
        return error_body(self.message, error_type=self.error_type, code=self.code, param=self.param)


class BadRequest(ApplicationError):
    status = 400
    default_code = "invalid_value"


class AuthenticationFailed(ApplicationError):
    status = 401
    default_code = "invalid_api_key"

    def __init__(self, message: str, **kwargs: Any) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="realtime-platform"', **kwargs.pop("headers", {})}
        super().__init__(message, headers=headers, **kwargs)


class PermissionDenied(ApplicationError):
    status = 403
    default_code = "permission_denied"


class NotFound(ApplicationError):
    """Unknown and not-yours look the same, so nobody can probe another tenant's ids."""

    status = 404
    default_code = "not_found"

    def __init__(self, resource: str = "object", **kwargs: Any) -> None:
        super().__init__(kwargs.pop("message", f"No such {resource}."), **kwargs)


class Conflict(ApplicationError):
    status = 409
    default_code = "conflict"


class Unprocessable(ApplicationError):
    status = 422
    default_code = "unprocessable_entity"


class RateLimited(ApplicationError):
    status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after))), **kwargs.pop("headers", {})}
        super().__init__(message, headers=headers, **kwargs)


class QuotaExceeded(ApplicationError):
    """An exact quota is used up. Not retryable until the period turns over or the limit rises."""

    status = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class ServiceUnavailable(ApplicationError):
    status = 503
    error_type = "server_error"
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after))), **kwargs.pop("headers", {})}
        super().__init__(message, headers=headers, **kwargs)


def error_body(
    message: str,
    *,
    error_type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def server_error_body() -> dict[str, Any]:
    request_id = current_request_id()
    suffix = f" (request id {request_id})" if request_id else ""
    return error_body(
        "The server had an error while processing your request. Sorry about that! You can retry your "
        f"request, or contact us if the error persists{suffix}.",
        error_type="server_error",
        code="server_error",
    )


def json_error(exc: ApplicationError) -> JsonResponse:
    response = JsonResponse(exc.as_body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


# --- DRF --------------------------------------------------------------------------------------

_VALIDATION_CODES = {
    "required": "missing_required_parameter",
    "null": "invalid_type",
    "invalid": "invalid_value",
    "invalid_choice": "invalid_value",
    "not_a_list": "invalid_type",
    "not_a_dict": "invalid_type",
    "max_length": "string_above_max_length",
    "min_length": "string_below_min_length",
    "max_value": "integer_above_max_value",
    "min_value": "integer_below_min_value",
    "unknown_parameter": "unknown_parameter",
}


def _first_validation_error(detail: Any, codes: Any, path: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """Walk DRF's nested error structure to the first leaf: (dotted param, message, code)."""
    if isinstance(detail, Mapping):
        for key, sub in detail.items():
            sub_codes = codes.get(key) if isinstance(codes, Mapping) else codes
            next_path = path if key == "non_field_errors" else (*path, str(key))
            return _first_validation_error(sub, sub_codes, next_path)
    if isinstance(detail, list) and detail:
        first = detail[0]
        first_code = codes[0] if isinstance(codes, list) and codes else codes
        if isinstance(first, Mapping | list):
            index = next((i for i, item in enumerate(detail) if item), 0)
            code_at = codes[index] if isinstance(codes, list) and len(codes) > index else codes
            return _first_validation_error(detail[index], code_at, (*path, str(index)))
        return ".".join(path), str(first), str(first_code)
    return ".".join(path), str(detail), str(codes)


def validation_error_body(detail: Any, codes: Any) -> dict[str, Any]:
    param, message, drf_code = _first_validation_error(detail, codes)
    code = _VALIDATION_CODES.get(drf_code, "invalid_value")
    if code == "missing_required_parameter":
        text = f"Missing required parameter: '{param}'."
    elif code == "unknown_parameter":
        text = f"Unknown parameter: '{param}'."
    elif param:
        text = f"Invalid '{param}': {message}"
    else:
        text = message
    return error_body(text, code=code, param=param or None)


def as_api_error(exc: Exception) -> ApplicationError | None:
    """The OpenAI-shaped error for every exception class an API view may raise; None for an
    unexpected one (a bug: answered with a 500 and logged). A database error (connection lost,
    failover, deadlock) is a 503 `database_unavailable` with Retry-After: transient, and the
    failed transaction was rolled back. Used by the DRF handler and by the
    issuance fast path (`tokens/asgi.py`), so both answer alike."""
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, drf.ValidationError):
        error = validation_error_body(exc.detail, exc.get_codes())["error"]
        return BadRequest(error["message"], code=error["code"], param=error["param"])
    if isinstance(exc, drf.ParseError):
        return BadRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object with "
            "Content-Type: application/json.",
            code="invalid_json",
        )
    if isinstance(exc, drf.NotAuthenticated):
        return AuthenticationFailed(
            "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
            "(Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(exc, Http404 | drf.NotFound):
        return NotFound()
    if isinstance(exc, Ratelimited):  # django-ratelimit's decorator (a PermissionDenied subclass)
        return RateLimited("Rate limit reached. Retry later.", retry_after=60)
    if isinstance(exc, DjangoPermissionDenied):
        return PermissionDenied("Permission denied.")
    if isinstance(exc, drf.Throttled):
        return RateLimited(
            "Rate limit reached. Retry later.", retry_after=int(getattr(exc, "wait", None) or 1)
        )
    if isinstance(exc, drf.APIException):
        code = exc.default_code if isinstance(exc.default_code, str) else None
        return ApplicationError(str(exc.detail), code=code, status=exc.status_code)
    if isinstance(exc, UpstreamError):
        return upstream_error_to_api_error(exc)
    if isinstance(exc, db.OperationalError | db.InterfaceError):  # connection lost, failover, deadlock
        logger.warning("database unavailable: %s", type(exc).__name__, exc_info=exc)
        return ServiceUnavailable(
            "The service is temporarily unable to reach its database. Please retry shortly.",
            retry_after=1,
            code="database_unavailable",
        )
    return None


def api_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response:
    error = as_api_error(exc)
    if error is None:
        logger.error("unhandled error in API view %s", type(exc).__name__, exc_info=exc)
        return Response(server_error_body(), status=500)
    return Response(error.as_body(), status=error.status, headers=error.headers)


# --- OpenAI (upstream) failures ---------------------------------------------------------------


def upstream_error_to_api_error(error: UpstreamError) -> ApplicationError:
    """What a client hears when OpenAI failed after the upstream client's own retries.

    - timeout → 504 `upstream_timeout`; connection failure → 502 `upstream_unavailable` (Retry-After)
    - the platform cannot call OpenAI at all (no key configured, the tenant's own key missing)
      → 503 with the upstream client's code
    - 429 → 429 with OpenAI's type and code (`insufficient_quota` is not retryable), Retry-After
    - 401/403: the platform's (or the tenant's own) OpenAI key was refused; not the caller's
      fault → 502 `upstream_auth_failed`
    - other 4xx (OpenAI rejected the session) → the same status, message, param and code
    - 5xx, or an answer that is not OpenAI's → 502 `upstream_error`
    Messages are redacted: OpenAI echoes parts of a rejected key."""
    message = redact_text(error.message)
    where = f" (OpenAI request id {error.request_id})" if error.request_id else ""
    retry_headers = {"Retry-After": str(max(1, math.ceil(error.retry_after or 1)))}
    status = error.status
    if status is None and error.code == "timeout":
        return ApplicationError(
            f"The OpenAI API did not answer in time{where}. Please retry shortly.",
            status=504,
            error_type="server_error",
            code="upstream_timeout",
            headers=retry_headers,
        )
    if status is None and error.retryable:
        return ApplicationError(
            f"The OpenAI API could not be reached{where}. Please retry shortly.",
            status=502,
            error_type="server_error",
            code="upstream_unavailable",
            headers=retry_headers,
        )
    if status is None:
        return ApplicationError(
            f"This organization cannot reach OpenAI right now: {message}",
            status=503,
            error_type="server_error",
            code=error.code or "upstream_not_configured",
        )
    if status == 429:
        code = error.code or "rate_limit_exceeded"
        headers = dict(retry_headers)
        if code == "insufficient_quota":
            headers["x-should-retry"] = "false"
        return ApplicationError(
            f"OpenAI refused the request for now: {message}{where}",
            status=429,
            error_type=error.type or "requests",
            code=code,
            headers=headers,
        )
    if status in (401, 403):
        return ApplicationError(
            f"The platform's credentials for OpenAI were refused{where}. This is not a problem with your "
            "API key; the organization's administrators can see it in the audit trail.",
            status=502,
            error_type="server_error",
            code="upstream_auth_failed",
        )
    if 400 <= status < 500:
        return ApplicationError(
            message,
            status=status,
            error_type=error.type or "invalid_request_error",
            code=error.code,
            param=error.param,
        )
    detail = f"status {status}" if status >= 500 else "an answer the platform could not understand"
    return ApplicationError(
        f"The OpenAI API failed ({detail}){where}. Please retry shortly.",
        status=502,
        error_type="server_error",
        code="upstream_error",
        headers=retry_headers,
    )


# --- Django-level handlers (URLs DRF never sees) ----------------------------------------------

API_PREFIXES = ("/v1/", "/api/")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def api_not_found(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        error_body(f"Invalid URL ({request.method} {request.path})", code="unknown_url"), status=404
    )
