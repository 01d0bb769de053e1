"""The only code that talks to OpenAI (or to the built-in emulator standing in for it).

REST: `POST {base}/realtime/client_secrets` over httpx, async (`create_client_secret`) and sync
(`create_client_secret_sync`, for sync views and Celery tasks), with explicit connect/read
timeouts and bounded, jittered retries (tenacity) on 429, 5xx, timeouts and connection errors,
waiting what `retry-after-ms`/`retry-after` asks for. Other 4xx are never retried.

WebSocket: `connect()` opens `{base as ws}/realtime?model=…` with the `websockets` library and
returns an `UpstreamSocket`, a byte/text pump: `recv()` hands back each frame exactly as it came
(str for text frames, bytes for binary) and `send()` sends what it is given. Nothing is re-encoded.

Every failure is one `UpstreamError`; upstream's `x-request-id` goes into it and into our logs.
Keys and `ek_` values are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from django.conf import settings
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from realtime_platform.context import current_request_id
from upstream.errors import UpstreamClosed, UpstreamError, parse_retry_after
from upstream.types import ClientSecretResult

if TYPE_CHECKING:
    from tenants.models import Tenant

__all__ = [
    "UpstreamClient",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamSocket",
    "upstream_client_for",
]

logger = logging.getLogger(__name__)

USER_AGENT = "realtime-platform/0.1 (+httpx; websockets)"
CLIENT_SECRETS_PATH = "/realtime/client_secrets"
REALTIME_PATH = "/realtime"
# Largest message we accept from upstream. conversation.item.retrieved can carry minutes of audio,
# so this is well above websockets' 1 MiB default (the OpenAI SDK lifts the limit entirely).
MAX_UPSTREAM_MESSAGE_BYTES = 16 * 1024 * 1024


class UpstreamSocket(Protocol):
    """What `connect()` returns; frames pass through untouched."""

    async def send(self, frame: str | bytes) -> None: ...

    async def recv(self) -> str | bytes: ...  # raises UpstreamClosed when the socket ends

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebsocketsUpstreamSocket:
    """`UpstreamSocket` over a `websockets` client connection.

    `first_frame` is the frame `connect()` already read to confirm the session started; the first
    `recv()` returns it, untouched, before reading anything else."""

    def __init__(
        self, connection: ClientConnection, *, first_frame: str | bytes | None, request_id: str | None
    ) -> None:
        self._connection = connection
        self._pending = first_frame
        self.request_id = request_id  # upstream's x-request-id of the handshake, for support

    async def send(self, frame: str | bytes) -> None:
        try:
            await self._connection.send(frame)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def recv(self) -> str | bytes:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        try:
            return await self._connection.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code=code, reason=reason)

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code


def _closed(exc: ConnectionClosed) -> UpstreamClosed:
    received = exc.rcvd
    if received is None:
        return UpstreamClosed(None, "connection lost without a close frame")
    return UpstreamClosed(received.code, received.reason)


# --- the shared sync HTTP client --------------------------------------------------------------

_sync_http: httpx.Client | None = None
_sync_http_lock = threading.Lock()


def _shared_sync_http() -> httpx.Client:
    """One pooled client per process, so sync callers reuse TLS connections to upstream."""
    global _sync_http
    with _sync_http_lock:
        if _sync_http is None or _sync_http.is_closed:
            _sync_http = httpx.Client(follow_redirects=False)
        return _sync_http


class UpstreamClient:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        max_retries: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_wait: float | None = None,
        http: httpx.AsyncClient | None = None,
        sync_http: httpx.Client | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("an upstream API key is required")
        self._api_key = api_key
        self.base_url = (base_url or settings.OPENAI_BASE_URL).rstrip("/")
        self.connect_timeout = (
            settings.UPSTREAM_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        )
        self.read_timeout = settings.UPSTREAM_READ_TIMEOUT if read_timeout is None else read_timeout
        self.max_retries = max(0, settings.UPSTREAM_MAX_RETRIES if max_retries is None else max_retries)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # A retry-after longer than this is not waited out: the error goes back to the caller,
        # retry_after included, rather than holding a request open for minutes.
        self.max_retry_wait = settings.UPSTREAM_RETRY_MAX_WAIT if max_retry_wait is None else max_retry_wait
        self._http = http
        self._sync_http = sync_http

    def __repr__(self) -> str:  # never shows the key
        return f"UpstreamClient(base_url={self.base_url!r})"

    # --- REST ---------------------------------------------------------------------------------

    async def create_client_secret(
        self, *, body: dict[str, Any], request_id: str | None = None
    ) -> ClientSecretResult:
        url, headers, payload = self._client_secret_request(body, request_id)
        retrying = AsyncRetrying(**self._retry_options())

        async def attempt() -> ClientSecretResult:
            started = time.perf_counter()
            try:
                if self._http is not None:
                    response = await self._http.post(
                        url, content=payload, headers=headers, timeout=self._timeout()
                    )
                else:
                    async with httpx.AsyncClient(follow_redirects=False) as http:
                        response = await http.post(
                            url, content=payload, headers=headers, timeout=self._timeout()
                        )
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc
            return self._client_secret_result(response, started)

        result: ClientSecretResult = await retrying(attempt)
        return result

    def create_client_secret_sync(
        self, *, body: dict[str, Any], request_id: str | None = None
    ) -> ClientSecretResult:
        url, headers, payload = self._client_secret_request(body, request_id)
        http = self._sync_http or _shared_sync_http()
        retrying = Retrying(**self._retry_options())

        def attempt() -> ClientSecretResult:
            started = time.perf_counter()
            try:
                response = http.post(url, content=payload, headers=headers, timeout=self._timeout())
            except httpx.TimeoutException as exc:
                raise self._timeout_error(exc) from exc
            except httpx.TransportError as exc:
                raise self._transport_error(exc) from exc
            return self._client_secret_result(response, started)

        result: ClientSecretResult = retrying(attempt)
        return result

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.read_timeout, connect=self.connect_timeout)

    def _client_secret_request(
        self, body: dict[str, Any], request_id: str | None
    ) -> tuple[str, dict[str, str], bytes]:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        client_request_id = request_id or current_request_id()
        if client_request_id:
            # OpenAI records X-Client-Request-Id with the request, so traces join up across both.
            headers["X-Client-Request-Id"] = client_request_id
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return self.base_url + CLIENT_SECRETS_PATH, headers, payload

    def _client_secret_result(self, response: httpx.Response, started: float) -> ClientSecretResult:
        request_id = response.headers.get("x-request-id")
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code >= 400:
            error = _error_from_response(response.status_code, response.headers, response.content, request_id)
            logger.warning(
                "upstream client_secrets failed status=%s code=%s retryable=%s request_id=%s elapsed_ms=%.1f",
                error.status,
                error.code,
                error.retryable,
                request_id,
                elapsed_ms,
            )
            raise error
        try:
            data = response.json()
            value, expires_at, session = data["value"], data["expires_at"], data["session"]
            if not (
                isinstance(value, str) and value and isinstance(expires_at, int) and isinstance(session, dict)
            ):
                raise TypeError("unexpected field types")
        except (ValueError, KeyError, TypeError) as exc:
            logger.error(
                "upstream client_secrets returned an unexpected body status=%s request_id=%s",
                response.status_code,
                request_id,
            )
            raise UpstreamError(
                "Upstream returned a response we could not understand.",
                status=response.status_code,
                type="server_error",
                code="bad_upstream_response",
                retryable=False,
                request_id=request_id,
            ) from exc
        logger.info(
            "upstream client_secrets ok status=%s request_id=%s elapsed_ms=%.1f",
            response.status_code,
            request_id,
            elapsed_ms,
        )
        return ClientSecretResult(value=value, expires_at=expires_at, session=session, request_id=request_id)

    def _timeout_error(self, exc: httpx.TimeoutException) -> UpstreamError:
        kind = "connect" if isinstance(exc, httpx.ConnectTimeout) else "read"
        logger.warning("upstream client_secrets timed out phase=%s", kind)
        return UpstreamError(
            f"Upstream did not answer in time ({kind} timeout).", status=None, type="timeout", code="timeout"
        )

    def _transport_error(self, exc: httpx.TransportError) -> UpstreamError:
        logger.warning("upstream client_secrets connection failed error=%s", type(exc).__name__)
        return UpstreamError(
            f"Could not reach upstream ({type(exc).__name__}).",
            status=None,
            type="connection_error",
            code="connection_error",
        )

    # --- retries ------------------------------------------------------------------------------

    def _retry_options(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.max_retries + 1),
            "retry": retry_if_exception(self._should_retry),
            "wait": self._wait,
            "before_sleep": self._log_retry,
            "reraise": True,
        }

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, UpstreamError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_retry_wait

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, UpstreamError) and exc.retry_after is not None:
            return exc.retry_after
        # Exponential backoff with "equal jitter": half the step fixed, half random, so retries
        # from many processes spread out but none comes back immediately.
        step = float(min(self.backoff_max, self.backoff_base * 2 ** (state.attempt_number - 1)))
        return step / 2 + random.uniform(0, step / 2)  # noqa: S311  (jitter, not security)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if isinstance(exc, UpstreamError):
            logger.warning(
                "upstream retry attempt=%d status=%s code=%s request_id=%s wait_s=%.2f",
                state.attempt_number,
                exc.status,
                exc.code,
                exc.request_id,
                wait,
            )

    # --- WebSocket ----------------------------------------------------------------------------

    def realtime_url(self, *, model: str | None = None, call_id: str | None = None) -> str:
        parts = urlsplit(self.base_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = [(name, value) for name, value in (("model", model), ("call_id", call_id)) if value]
        return urlunsplit(
            (scheme, parts.netloc, parts.path.rstrip("/") + REALTIME_PATH, urlencode(query), "")
        )

    async def connect(
        self,
        *,
        model: str | None = None,
        call_id: str | None = None,
        session_id_hint: str | None = None,
    ) -> UpstreamSocket:
        """Open the upstream realtime socket and wait for its first event.

        Returns once upstream has sent `session.created` (that frame is what the first `recv()`
        returns). Raises `UpstreamError` when the handshake is refused, times out, or upstream
        answers the connection with an `error` event and closes (as it does for a bad key), so
        callers see one kind of failure whichever way upstream refuses."""
        url = self.realtime_url(model=model, call_id=call_id)
        headers = {"Authorization": f"Bearer {self._api_key}"}
        client_request_id = current_request_id()
        if client_request_id:
            headers["X-Client-Request-Id"] = client_request_id
        started = time.perf_counter()
        try:
            connection = await ws_connect(
                url,
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                open_timeout=self.connect_timeout,
                max_size=MAX_UPSTREAM_MESSAGE_BYTES,
                compression=None,  # audio is incompressible; deflate would only cost CPU
            )
        except InvalidStatus as exc:
            response = exc.response
            error = _error_from_response(
                response.status_code,
                dict(response.headers.raw_items()),
                response.body or b"",
                response.headers.get("x-request-id"),
            )
            logger.warning(
                "upstream realtime handshake refused status=%s code=%s request_id=%s session=%s",
                error.status,
                error.code,
                error.request_id,
                session_id_hint,
            )
            raise error from exc
        except TimeoutError as exc:
            logger.warning("upstream realtime handshake timed out session=%s", session_id_hint)
            raise UpstreamError(
                "Upstream did not accept the realtime connection in time.", type="timeout", code="timeout"
            ) from exc
        except (OSError, InvalidHandshake) as exc:
            logger.warning(
                "upstream realtime connection failed error=%s session=%s", type(exc).__name__, session_id_hint
            )
            raise UpstreamError(
                f"Could not reach upstream ({type(exc).__name__}).",
                type="connection_error",
                code="connection_error",
            ) from exc

        request_id = connection.response.headers.get("x-request-id") if connection.response else None
        first = await self._first_frame(connection, request_id=request_id, session_id_hint=session_id_hint)
        logger.info(
            "upstream realtime connected request_id=%s session=%s elapsed_ms=%.1f",
            request_id,
            session_id_hint,
            (time.perf_counter() - started) * 1000,
        )
        return WebsocketsUpstreamSocket(connection, first_frame=first, request_id=request_id)

    async def _first_frame(
        self, connection: ClientConnection, *, request_id: str | None, session_id_hint: str | None
    ) -> str | bytes:
        try:
            async with asyncio.timeout(self.read_timeout):
                first = await connection.recv()
        except TimeoutError as exc:
            await connection.close()
            raise UpstreamError(
                "Upstream opened the realtime connection but sent no session.",
                type="timeout",
                code="timeout",
                request_id=request_id,
            ) from exc
        except ConnectionClosed as exc:
            closed = _closed(exc)
            raise UpstreamError(
                f"Upstream closed the realtime connection at once (code {closed.code}).",
                type="connection_error",
                code="connection_error",
                request_id=request_id,
            ) from exc
        error = _error_event(first)
        if error is None:
            return first
        # An error before session.created means upstream refused the session (bad or expired
        # key, unknown model): the socket is about to close, so this is a failed connect.
        await connection.close()
        code = error.get("code") if isinstance(error.get("code"), str) else None
        status = 401 if code in {"invalid_api_key", "invalid_ephemeral_key"} else 400
        logger.warning(
            "upstream realtime session refused code=%s request_id=%s session=%s",
            code,
            request_id,
            session_id_hint,
        )
        raise UpstreamError(
            str(error.get("message") or "Upstream refused the realtime session."),
            status=status,
            type=error.get("type") if isinstance(error.get("type"), str) else None,
            code=code,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            retryable=False,
            request_id=request_id,
        )


def _error_event(frame: str | bytes) -> dict[str, Any] | None:
    """The `error` object of an error event, or None. Only inspects the first event of a socket."""
    if not isinstance(frame, str) or '"error"' not in frame:
        return None
    try:
        event = json.loads(frame)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("type") == "error" and isinstance(event.get("error"), dict):
        error: dict[str, Any] = event["error"]
        return error
    return None


def _error_from_response(
    status: int, headers: Mapping[str, str], content: bytes, request_id: str | None
) -> UpstreamError:
    message = f"Upstream returned HTTP {status}."
    error_type = code = param = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        error_type = error.get("type") if isinstance(error.get("type"), str) else None
        code = error.get("code") if isinstance(error.get("code"), str) else None
        param = error.get("param") if isinstance(error.get("param"), str) else None
    lowered = {key.lower(): value for key, value in headers.items()}
    retryable: bool | None = None
    if code == "insufficient_quota" or error_type == "insufficient_quota":
        retryable = False  # a 429 for an exhausted balance: waiting does not help
    should_retry = lowered.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    return UpstreamError(
        message,
        status=status,
        type=error_type,
        code=code,
        param=param,
        retryable=retryable,
        request_id=request_id or lowered.get("x-request-id"),
        retry_after=parse_retry_after(lowered),
    )


def platform_api_key() -> str:
    """The platform's own upstream key: OPENAI_API_KEY, or the built-in emulator's key without one."""
    key = settings.OPENAI_API_KEY or (
        settings.UPSTREAM_EMULATOR_API_KEY if settings.UPSTREAM_EMULATOR else ""
    )
    if not key:
        raise UpstreamError(
            "No upstream API key is configured (set OPENAI_API_KEY).",
            type="server_error",
            code="upstream_not_configured",
            retryable=False,
        )
    return key


def upstream_client_for(tenant: Tenant, *, http: httpx.AsyncClient | None = None) -> UpstreamClient:
    """The platform's key (settings.OPENAI_API_KEY, or the emulator's key when unset), or the tenant's
    own key when tenant.upstream_mode == "own" (decrypted now, via tenants.selectors.upstream_api_key).
    `http`: a long-lived AsyncClient for the async calls to reuse (connection pooling), instead of
    one client per call."""
    from tenants.models import Tenant
    from tenants.selectors import upstream_api_key

    if tenant.upstream_mode == Tenant.UpstreamMode.OWN:
        own_key = upstream_api_key(tenant=tenant)
        if not own_key:
            raise UpstreamError(
                "This tenant is set to use its own OpenAI key, but none is stored.",
                status=None,
                type="invalid_request_error",
                code="upstream_key_missing",
                retryable=False,
            )
        return UpstreamClient(api_key=own_key, http=http)
    return UpstreamClient(api_key=platform_api_key(), http=http)
