"""The issuance hot path as a lean ASGI endpoint in front of Django.

Why (measured; README "Serving the hot path"): under daphne, Django's ASGI handler runs each
request's sync middleware and views through `sync_to_async` inside a fresh ThreadSensitiveContext,
i.e. on a new thread per request, with a thread hop per middleware method and a new database
connection per request (persistent connections do not survive it). That cost several
milliseconds of CPU per request on the reference machine before any work was done. This endpoint
answers `POST /v1/realtime/client_secrets` itself:

- the request is read here (body capped at RTP_MAX_REQUEST_BYTES), wrapped in Django's own
  ASGIRequest (so host validation, HTTPS detection and client-IP logic are Django's), and given
  a request id exactly as RequestIdMiddleware does;
- all database work runs in one small pool of long-lived threads (RTP_ISSUANCE_DB_THREADS), each
  keeping its connection (CONN_MAX_AGE and health checks apply as usual), one hop per phase;
- the call to OpenAI (upstream kind) is awaited on the event loop, so a slow OpenAI holds no
  thread and no database connection;
- every step is the same service code the DRF view (`tokens.apis.ClientSecretCreateApi`) calls,
  and every error is mapped by the same `realtime_platform.errors.as_api_error`.

Anything else (other paths, other methods) goes to Django untouched.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections, connections
from django.http import HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.middleware.security import SecurityMiddleware

from realtime_platform.context import request_id_var, tenant_id_var
from realtime_platform.errors import (
    ApplicationError,
    AuthenticationFailed,
    BadRequest,
    as_api_error,
    error_body,
    json_error,
    server_error_body,
)
from realtime_platform.http import client_ip
from realtime_platform.middleware import RequestIdMiddleware
from tenants.auth import INCORRECT_KEY_MESSAGE, api_key_authenticate, bearer_token
from tokens.apis import issued_response
from tokens.selectors import ISSUANCE_RELATED
from tokens.services import (
    Issued,
    UpstreamPending,
    client_secret_issue_abandon,
    client_secret_issue_start,
    client_secret_issue_upstream_failed,
    client_secret_issue_upstream_succeeded,
)
from upstream.errors import UpstreamError

logger = logging.getLogger(__name__)

PATH = "/v1/realtime/client_secrets"
T = TypeVar("T")
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _db_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.ISSUANCE_DB_THREADS, thread_name_prefix="issuance-db"
            )
        return _executor


def shutdown_db_threads() -> None:
    """Close every pool thread's database connection and stop the pool (tests, shutdown)."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    workers = settings.ISSUANCE_DB_THREADS
    barrier = threading.Barrier(workers)

    def close_own_connections() -> None:
        barrier.wait(timeout=10)  # so that each thread runs exactly one of these
        connections.close_all()

    for future in [executor.submit(close_own_connections) for _ in range(workers)]:
        future.result()
    executor.shutdown(wait=True)


def _job(request_id: str, tenant_id: str, fn: Callable[..., T], *args: Any) -> T:
    # Runs in a pool thread's own context (run_in_executor does not copy the caller's), so the
    # thread's database connection persists between requests; the log/audit context is set here.
    request_id_var.set(request_id)
    tenant_id_var.set(tenant_id)
    close_old_connections()
    return fn(*args)


async def _in_db_thread(request_id: str, tenant_id: str, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _db_executor(), functools.partial(_job, request_id, tenant_id, fn, *args)
    )


def _start(
    token: str | None, body: bytes, idempotency_key: str | None, ip: str | None, http: httpx.AsyncClient
) -> Issued | UpstreamPending:
    """Phase 1 in a pool thread: authenticate, then everything up to the upstream call."""
    if token == "":  # an Authorization header that is not "Bearer <token>"
        raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
    principal = api_key_authenticate(token, related=ISSUANCE_RELATED)
    return client_secret_issue_start(
        principal=principal, body=body, idempotency_key=idempotency_key, ip=ip, upstream_http=http
    )


_http_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _upstream_http() -> httpx.AsyncClient:
    """One pooled AsyncClient per event loop (daphne runs one), so calls to OpenAI reuse their
    connections instead of opening one (and a TLS handshake) per secret."""
    loop = asyncio.get_running_loop()
    client = _http_clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(follow_redirects=False)
        _http_clients[loop] = client
    return client


def _no_view(request: Any) -> HttpResponse:
    return HttpResponse()


class IssuanceFastPath:
    """ASGI middleware: serves `POST /v1/realtime/client_secrets`, passes everything else on."""

    def __init__(self, app: Callable[[Any, Any, Any], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and settings.ISSUANCE_FAST_PATH
        ):
            await self.handle(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def handle(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        body, too_large = await _read_body(receive, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        request = ASGIRequest(scope, io.BytesIO(body))
        RequestIdMiddleware._start(request)
        security = SecurityMiddleware(_no_view)  # reads its settings now, as Django would per process
        try:
            response = await self._respond(request, body, too_large, security)
        except Exception as exc:  # a bug: log it, answer OpenAI's 500 without internals
            logger.error("unhandled error on POST %s", PATH, exc_info=exc)
            response = JsonResponse(server_error_body(), status=500)
        response = security.process_response(request, response)
        response = RequestIdMiddleware._finish(request, response)
        await _send_response(response, send)

    async def _respond(
        self, request: ASGIRequest, body: bytes, too_large: bool, security: SecurityMiddleware
    ) -> HttpResponse:
        if too_large:
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return JsonResponse(
                error_body(
                    f"Request body too large: at most {limit} bytes are accepted.", code="request_too_large"
                ),
                status=413,
            )
        try:
            request.get_host()
        except DisallowedHost:
            return json_error(BadRequest("Invalid Host header.", code="invalid_host"))
        redirect = security.process_request(request)
        if isinstance(redirect, HttpResponsePermanentRedirect):
            return redirect
        request_id = request.request_id  # type: ignore[attr-defined]
        try:
            issued = await self._issue(request, body, request_id)
        except Exception as exc:
            error = as_api_error(exc)
            if error is None:
                raise
            return json_error(error)
        return issued_response(issued)

    async def _issue(self, request: ASGIRequest, body: bytes, request_id: str) -> Issued:
        started = await _in_db_thread(
            request_id,
            "-",
            _start,
            bearer_token(request.META.get("HTTP_AUTHORIZATION")),
            body,
            request.headers.get("Idempotency-Key"),
            client_ip(request.META),
            _upstream_http(),
        )
        if isinstance(started, Issued):
            return started
        tenant_id = str(started.principal.tenant.pk)
        try:
            result = await started.client.create_client_secret(
                body=started.plan.upstream_body, request_id=request_id
            )
        except UpstreamError as exc:
            error: ApplicationError = await _in_db_thread(
                request_id, tenant_id, client_secret_issue_upstream_failed, started, exc
            )
            raise error from None
        except BaseException:
            await _in_db_thread(request_id, tenant_id, client_secret_issue_abandon, started)
            raise
        return await _in_db_thread(
            request_id, tenant_id, client_secret_issue_upstream_succeeded, started, result
        )


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, or (b"", True) once it passes `limit` (the rest is drained unread)."""
    chunks: list[bytes] = []
    size = 0
    too_large = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_large = True
            chunks = []
        elif not too_large:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return (b"", True) if too_large else (b"".join(chunks), False)


async def _send_response(response: HttpResponse, send: Send) -> None:
    response["Content-Length"] = str(len(response.content))
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
