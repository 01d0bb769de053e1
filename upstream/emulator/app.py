"""The emulator as an ASGI application: the same paths as api.openai.com, under any prefix.

- `POST {prefix}/v1/realtime/client_secrets` mints `ek_` secrets;
- `WS {prefix}/v1/realtime?model=…` (or `?intent=transcription`) runs a `RealtimeSessionEmulator`.

Pure asyncio: no Django, no ORM, no thread hops, so it can share the platform's own event loop
(embedded run) with sync Django views calling it over HTTP from their worker threads.
Keys: `Authorization: Bearer <key>` (or the browser subprotocol `openai-insecure-api-key.<key>`);
REST accepts the keys the emulator was built with; the socket also accepts live `ek_` values it
minted, whose session config then applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from upstream.emulator import schema
from upstream.emulator.faults import (
    FaultPlan,
    HttpFault,
    SocketFault,
    http_fault_from_spec,
    socket_fault_from_spec,
)
from upstream.emulator.schema import InvalidRequest
from upstream.emulator.session import RealtimeSessionEmulator
from upstream.emulator.state import (
    EmulatorConfig,
    EmulatorState,
    RecordedConnection,
    RecordedRequest,
    mask_key,
    new_id,
    new_request_id,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLIENT_SECRETS = "/v1/realtime/client_secrets"
REALTIME = "/v1/realtime"
INSECURE_KEY_SUBPROTOCOL = "openai-insecure-api-key."
FAULT_HEADER = "x-emulator-fault"
FAULT_QUERY = "emulator_fault"
# Close codes after a refusal `error` event. Upstream's are not documented (spec digest §2.4), and
# daphne lets an application close only with 1000 or 3000-4999, so these are 4xxx codes that read
# like the HTTP status they stand for; 4000 is what upstream used for the retired beta shape.
CLOSE_SERVER_ERROR = 1011
CLOSE_BETA_REFUSED = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_NOT_FOUND = 4004
NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class EmulatedSocketFailure(Exception):
    """Raised out of the ASGI app to make the server drop the socket with 1011, as a crashing
    upstream does (an application may not send 1011 itself under daphne)."""


def _hide_emulated_failures(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, EmulatedSocketFailure)


# daphne logs application exceptions as errors; an injected failure is not one
logging.getLogger("daphne.server").addFilter(_hide_emulated_failures)


class Emulator:
    """An emulated OpenAI Realtime API. Call it as an ASGI app; drive it from tests through
    `faults` (fault injection), `config` (durations, pacing, recording) and `state` (minted
    secrets, recorded requests and connections)."""

    def __init__(
        self, *, api_keys: set[str] | list[str] | tuple[str, ...], config: EmulatorConfig | None = None
    ) -> None:
        self.config = config or EmulatorConfig()
        self.state = EmulatorState(api_keys=set(api_keys), config=self.config)
        self.faults = FaultPlan()
        self.sessions: set[RealtimeSessionEmulator] = set()

    def add_api_key(self, key: str) -> None:
        self.state.api_keys.add(key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        route = _route(scope)
        headers = _headers(scope)
        method = str(scope.get("method", "GET")).upper()
        body, too_large = await _read_body(receive, self.config.max_body_bytes)
        query = scope.get("query_string", b"").decode("latin-1")
        record = RecordedRequest(
            method=method, path=route, query=query, headers=_masked(headers), body=body, request_id=request_id
        )
        if self.config.record:
            self.state.requests.append(record)
        fault = self.faults.take_http()
        if fault is None and (FAULT_HEADER in headers or FAULT_QUERY in dict(parse_qsl(query))):
            fault = http_fault_from_spec(headers.get(FAULT_HEADER) or dict(parse_qsl(query))[FAULT_QUERY])
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        status, payload, extra = self._answer(method, route, headers, body, too_large, fault, record)
        record.status = status
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"openai-version", b"2020-10-01"),
            (b"openai-processing-ms", str(elapsed_ms).encode()),
            *self._rate_limit_headers(),
            *((name.encode(), value.encode()) for name, value in extra.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    def _answer(
        self,
        method: str,
        route: str,
        headers: dict[str, str],
        body: bytes,
        too_large: bool,
        fault: HttpFault | None,
        record: RecordedRequest,
    ) -> tuple[int, bytes, dict[str, str]]:
        if route != CLIENT_SECRETS or method != "POST":
            return _error(404, f"Invalid URL ({method} {route})", code="unknown_url")
        if fault is not None and fault.status:
            return _fault_response(fault)
        kind, _ = self.state.authenticate(_bearer(headers), allow_ephemeral=False)
        record.auth = kind
        if kind is None:
            return _auth_error(_bearer(headers))
        if fault is not None and fault.malformed_body:
            return 200, b'{"value": "ek_', {}
        if too_large:
            return _error(413, "The request body is too large.", code="request_too_large")
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.)",
            )
        if not isinstance(data, dict):
            return _error(400, "The request body must be a JSON object.", code="invalid_type")
        try:
            valid = schema.validate(schema.client_secret_body, data)
        except InvalidRequest as exc:
            return _error(400, exc.message, code=exc.code, param=exc.param)
        session_in = dict(valid.get("session") or {"type": "realtime"})
        kind_of_session = session_in.pop("type")
        session = schema.merge_session(schema.default_session(kind_of_session), session_in)
        ttl = valid.get("expires_after", {}).get("seconds", 600)
        secret = self.state.mint(session=session, ttl_seconds=ttl)
        echoed: dict[str, Any] = {"type": session["type"]}
        if kind_of_session == "realtime":
            echoed["object"] = "realtime.session"
            echoed["id"] = new_id("sess")
            echoed.update({k: v for k, v in session.items() if k != "type"})
            echoed["expires_at"] = 0
        else:
            echoed.update(
                {
                    "object": "realtime.transcription_session",
                    "id": new_id("sess"),
                    "expires_at": 0,
                    "audio": session["audio"],
                    "include": session.get("include"),
                }
            )
        _order_like_capture(echoed)
        payload = {"value": secret.value, "expires_at": secret.expires_at, "session": echoed}
        return 200, orjson.dumps(payload), {}

    def _rate_limit_headers(self) -> list[tuple[bytes, bytes]]:
        limits = {item["name"]: item for item in self.state.rate_limits()}
        requests, tokens = limits["requests"], limits["tokens"]
        reset = f"{requests['reset_seconds']:.0f}s".encode()
        return [
            (b"x-ratelimit-limit-requests", str(requests["limit"]).encode()),
            (b"x-ratelimit-remaining-requests", str(requests["remaining"]).encode()),
            (b"x-ratelimit-reset-requests", reset),
            (b"x-ratelimit-limit-tokens", str(tokens["limit"]).encode()),
            (b"x-ratelimit-remaining-tokens", str(tokens["remaining"]).encode()),
            (b"x-ratelimit-reset-tokens", reset),
        ]

    # --- WebSocket ----------------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        route = _route(scope)
        headers = _headers(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        subprotocols = [str(p) for p in scope.get("subprotocols") or []]
        if route != REALTIME:
            await send({"type": "websocket.close", "code": 1000})
            return
        fault = self.faults.take_socket()
        if fault is None and (FAULT_HEADER in headers or FAULT_QUERY in query):
            fault = socket_fault_from_spec(headers.get(FAULT_HEADER) or query[FAULT_QUERY])
        record = RecordedConnection(
            path=route, query=query, headers=_masked(headers), subprotocols=subprotocols
        )
        if self.config.record:
            self.state.connections.append(record)
        try:
            if fault is not None and fault.reject:
                await send({"type": "websocket.close", "code": 1000})  # before accept: the upgrade is refused
                return
            if fault is not None and fault.accept_delay:
                await asyncio.sleep(fault.accept_delay)
            await self._serve_socket(scope, receive, send, headers, query, subprotocols, fault, record)
        finally:
            record.closed.set()

    async def _serve_socket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        query: dict[str, str],
        subprotocols: list[str],
        fault: SocketFault | None,
        record: RecordedConnection,
    ) -> None:
        key = _bearer(headers) or next(
            (
                p[len(INSECURE_KEY_SUBPROTOCOL) :]
                for p in subprotocols
                if p.startswith(INSECURE_KEY_SUBPROTOCOL)
            ),
            None,
        )
        accept: Message = {
            "type": "websocket.accept",
            "headers": [(b"x-request-id", new_request_id().encode())],
        }
        if "realtime" in subprotocols:
            accept["subprotocol"] = "realtime"
        await send(accept)

        closed = asyncio.Event()
        aborted: list[int] = []

        async def send_text(text: str) -> None:
            if not closed.is_set():
                await send({"type": "websocket.send", "text": text})

        async def close(code: int, reason: str) -> None:
            if not closed.is_set():
                closed.set()
                if code == CLOSE_SERVER_ERROR:
                    aborted.append(code)  # raised below: the server turns it into close code 1011
                    return
                await send({"type": "websocket.close", "code": code, "reason": reason})

        kind, secret = self.state.authenticate(key, allow_ephemeral=True)
        record.auth = kind
        refusal = self._refusal(kind, key, headers, query)
        session_kind = "transcription" if query.get("intent") == "transcription" else "realtime"
        if secret is not None:
            config = dict(secret.session)
            session_kind = config["type"]
            secret.sessions_opened += 1
        else:
            config = schema.default_session(
                session_kind, model=query.get("model") or schema.DEFAULT_MODEL, voice="marin"
            )
        if session_kind == "realtime":
            config["model"] = schema.MODEL_SNAPSHOTS.get(config["model"], config["model"])
        session = RealtimeSessionEmulator(
            state=self.state,
            kind=session_kind,
            config=config,
            send=send_text,
            close=close,
            fault=fault,
            record=record,
        )
        record.session_id = session.session_id
        if refusal is not None:
            error, code = refusal
            await session.refuse(error, code=code)
            await _drain_until_disconnect(receive)
            return
        self.sessions.add(session)
        receiver = asyncio.ensure_future(self._pump(session, receive, record))
        closer = asyncio.ensure_future(closed.wait())
        try:
            await session.start()
            await asyncio.wait({receiver, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            session.stop()
            closer.cancel()
            if aborted:
                receiver.cancel()
                self.sessions.discard(session)
                raise EmulatedSocketFailure("emulated upstream failure (fault injection)")
            if not receiver.done():
                # we closed first: keep reading until the client's close handshake completes
                try:
                    await asyncio.wait_for(receiver, timeout=5)
                except TimeoutError:
                    receiver.cancel()
            elif not receiver.cancelled() and receiver.exception() is not None:
                raise receiver.exception()  # type: ignore[misc]
            self.sessions.discard(session)

    async def _pump(
        self, session: RealtimeSessionEmulator, receive: Receive, record: RecordedConnection
    ) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] != "websocket.receive":
                continue
            if session.closed:
                continue
            text, data = message.get("text"), message.get("bytes")
            if self.config.record:
                record.received.append(text if text is not None else (data or b""))
            if text is not None:
                await session.handle_text(text)
            elif data is not None:
                await session.handle_bytes(data)

    def _refusal(
        self, kind: str | None, key: str | None, headers: dict[str, str], query: dict[str, str]
    ) -> tuple[dict[str, Any], int] | None:
        if headers.get("openai-beta", "").startswith("realtime"):
            return (
                _ws_error(
                    "The Realtime Beta API is no longer supported. Connect without the OpenAI-Beta header "
                    "to use the GA interface.",
                    code="beta_api_shape_disabled",
                ),
                CLOSE_BETA_REFUSED,
            )
        if kind is None:
            if not key:
                message = NO_KEY_MESSAGE
            elif self.state.is_expired_secret(key):
                message = "The ephemeral key has expired. Create a new client secret."
            else:
                message = f"Incorrect API key provided: {mask_key(key)}."
            return _ws_error(message, code="invalid_api_key"), CLOSE_UNAUTHORIZED
        if query.get("call_id"):
            return (
                _ws_error(
                    f"Call not found: {query['call_id']}. The emulator has no WebRTC or SIP calls.",
                    code="call_not_found",
                    param="call_id",
                ),
                CLOSE_NOT_FOUND,
            )
        model = query.get("model")
        if kind == "api_key" and model and model not in schema.REALTIME_MODELS:
            return (
                _ws_error(
                    f"The model '{model}' does not exist or you do not have access to it.",
                    code="model_not_found",
                    param="model",
                ),
                CLOSE_NOT_FOUND,
            )
        return None


# --- helpers ----------------------------------------------------------------------------------


def _route(scope: Scope) -> str:
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", "") or "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


def _headers(scope: Scope) -> dict[str, str]:
    return {
        bytes(name).decode("latin-1").lower(): bytes(value).decode("latin-1")
        for name, value in scope.get("headers", [])
    }


def _masked(headers: dict[str, str]) -> dict[str, str]:
    masked = dict(headers)
    if "authorization" in masked:
        scheme, _, value = masked["authorization"].partition(" ")
        masked["authorization"] = f"{scheme} {mask_key(value)}"
    return masked


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks), size > limit


async def _drain_until_disconnect(receive: Receive) -> None:
    try:
        async with asyncio.timeout(5):
            while (await receive())["type"] != "websocket.disconnect":
                pass
    except TimeoutError:
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    error_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return status, orjson.dumps(body), headers or {}


def _auth_error(key: str | None) -> tuple[int, bytes, dict[str, str]]:
    if not key:
        return _error(401, NO_KEY_MESSAGE)
    return _error(401, f"Incorrect API key provided: {mask_key(key)}.", code="invalid_api_key")


_FAULT_DEFAULTS = {
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}


def _fault_response(fault: HttpFault) -> tuple[int, bytes, dict[str, str]]:
    status = int(fault.status or 500)
    error_type, code, message = _FAULT_DEFAULTS.get(
        status,
        ("invalid_request_error" if status < 500 else "server_error", None, f"Emulated HTTP {status}."),
    )
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    return _error(
        status,
        fault.message or message,
        code=fault.code if fault.code is not None else code,
        error_type=fault.type or error_type,
        headers=headers,
    )


def _ws_error(message: str, *, code: str, param: str | None = None) -> dict[str, Any]:
    return {"type": "invalid_request_error", "code": code, "message": message, "param": param}


_CAPTURE_ORDER = (
    "type",
    "object",
    "id",
    "model",
    "output_modalities",
    "instructions",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "expires_at",
    "audio",
    "include",
)


def _order_like_capture(session: dict[str, Any]) -> None:
    """Key order as in upstream's captured response (cosmetic, but diffs against it stay readable)."""
    ordered = {key: session[key] for key in _CAPTURE_ORDER if key in session}
    ordered.update({k: v for k, v in session.items() if k not in ordered})
    session.clear()
    session.update(ordered)
