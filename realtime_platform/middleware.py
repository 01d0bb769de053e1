"""Request ids and the API surface's error guarantees, for sync and async views alike."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from realtime_platform.context import accept_request_id, request_id_var, tenant_id_var
from realtime_platform.errors import api_not_found, error_body, is_api_path, server_error_body

logger = logging.getLogger(__name__)

Handler = Callable[[HttpRequest], Any]


class _HybridMiddleware(ABC):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        return self._call(request)

    @abstractmethod
    def _call(self, request: HttpRequest) -> HttpResponse: ...

    @abstractmethod
    async def _acall(self, request: HttpRequest) -> HttpResponse: ...


class RequestIdMiddleware(_HybridMiddleware):
    """Takes X-Request-Id from the caller (when sane) or mints one; echoes it as x-request-id."""

    # The variables are set, not reset, on the way out: Django logs 4xx/5xx responses after the
    # middleware chain returns, and those lines should carry the id too. Each request sets them
    # afresh on entry (ASGI requests also run in their own context).

    @staticmethod
    def _start(request: HttpRequest) -> None:
        request_id = accept_request_id(request.headers.get("X-Request-Id"))
        request.request_id = request_id  # type: ignore[attr-defined]
        request_id_var.set(request_id)
        tenant_id_var.set("-")

    @staticmethod
    def _finish(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["x-request-id"] = request.request_id  # type: ignore[attr-defined]
        return response

    def _call(self, request: HttpRequest) -> HttpResponse:
        self._start(request)
        return self._finish(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        self._start(request)
        return self._finish(request, await self.get_response(request))


class ApiErrorMiddleware(_HybridMiddleware):
    """On /v1/ and /api/: cap the body size before any view reads it, and make sure an unhandled
    exception becomes an OpenAI-shaped 500 with no stack trace (it is logged instead)."""

    @staticmethod
    def _check_body(request: HttpRequest) -> JsonResponse | None:
        if request.method not in ("POST", "PUT", "PATCH") or not is_api_path(request.path):
            return None
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        too_large = JsonResponse(
            error_body(
                f"Request body too large: at most {limit} bytes are accepted.", code="request_too_large"
            ),
            status=413,
        )
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return too_large
        # A chunked body has no Content-Length: read at most limit+1 bytes and keep them for DRF.
        body = request.read(limit + 1)
        if len(body) > limit:
            return too_large
        request._body = body
        return None

    @staticmethod
    def _crash(request: HttpRequest, exc: Exception) -> JsonResponse:
        logger.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return JsonResponse(server_error_body(), status=500)

    @staticmethod
    def _json_404(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        # Unmatched API URLs answer in OpenAI's shape, in DEBUG too (where Django would render
        # its technical HTML page instead of calling handler404).
        if (
            response.status_code == 404
            and is_api_path(request.path)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return api_not_found(request)
        return response

    def _call(self, request: HttpRequest) -> HttpResponse:
        rejected = self._check_body(request)
        if rejected is not None:
            return rejected
        return self._json_404(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        rejected = self._check_body(request)
        if rejected is not None:
            return rejected
        return self._json_404(request, await self.get_response(request))

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_api_path(request.path):
            return self._crash(request, exception)
        return None
