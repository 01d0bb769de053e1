"""WebSocket /v1/realtime: authenticate the handshake, then hand frames to a RelaySession.

Credentials: a tenant API key with scope realtime:connect or a relay token (`rtp_rt_…`), sent as
`Authorization: Bearer …` or, from browsers, as the subprotocol `openai-insecure-api-key.<token>`.
Every refusal happens before the socket is accepted: an HTTP 401/403/429 answer with an
OpenAI-shaped JSON body where the server supports the ASGI `websocket.http.response` extension
(uvicorn), otherwise a close before accept, which daphne 4.2.3 answers with HTTP 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import BaseChannelLayer, get_channel_layer
from django import db
from django.conf import settings

from realtime_platform.context import accept_request_id, request_id_var, tenant_id_var
from realtime_platform.errors import as_api_error, server_error_body
from relay.core import (
    CLOSE_QUOTA,
    CLOSE_UPSTREAM_FAILED,
    GROUP_KEY,
    GROUP_TENANT,
    TERMINATE,
    Cutoff,
    EndReason,
    RelayLimits,
    RelaySession,
    SessionPlan,
    SessionStats,
    quota_cutoff,
    termination_cutoff,
)
from relay.flow import ClientFlow, flow_for
from relay.services import (
    RelayGrant,
    quota_message,
    relay_session_end,
    relay_session_heartbeat,
    relay_session_meter,
    relay_session_open,
)
from tenants.auth import bearer_token

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def in_database(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run a relay service in a database thread; if the connection died under it (a restart, a
    failover), once more on a fresh connection, which the pool tests first. Only for services
    that are one transaction or idempotent: the handshake (rolled back whole), metering (once per
    response id) and the end of a session (safe to call twice)."""
    call = database_sync_to_async(fn)
    try:
        return cast(T, await call(**kwargs))
    except (db.OperationalError, db.InterfaceError):
        logger.warning("database connection lost in %s; retrying once", fn.__name__)
        return cast(T, await call(**kwargs))


SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
ABANDON_AFTER_SECONDS = 2.0  # after the session ended, how long to wait for the client's close


def relay_limits() -> RelayLimits:
    return RelayLimits(
        max_event_bytes=settings.RELAY_MAX_EVENT_BYTES,
        max_frame_bytes=settings.RELAY_MAX_FRAME_BYTES,
        slow_client_seconds=settings.RELAY_SLOW_CLIENT_SECONDS,
        heartbeat_seconds=settings.RELAY_HEARTBEAT_SECONDS,
        upstream_ready_seconds=settings.UPSTREAM_CONNECT_TIMEOUT + 5,
    )


def handshake_credential(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """(the credential, the subprotocol to accept with). The Authorization header wins over the
    browser subprotocol. We answer with `realtime` when the client offers it (as OpenAI's browser
    client does), otherwise with the key subprotocol itself, since a browser fails the handshake
    unless the server picks one of the protocols it offered."""
    protocols = [str(p) for p in scope.get("subprotocols") or []]
    key_protocol = next((p for p in protocols if p.startswith(SUBPROTOCOL_KEY_PREFIX)), None)
    header = next((value for name, value in scope.get("headers") or [] if name == b"authorization"), None)
    if header is not None:
        credential = bearer_token(header.decode("latin-1"))
    elif key_protocol is not None:
        credential = key_protocol[len(SUBPROTOCOL_KEY_PREFIX) :]
    else:
        credential = None
    chosen = "realtime" if "realtime" in protocols else key_protocol
    return credential, chosen


def query_value(scope: dict[str, Any], name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


class ClientSocket:
    """The core's view of the client: text frames out (waiting while the client is not reading,
    where the server lets us know), and close."""

    __slots__ = ("_flow", "_send")

    def __init__(self, send: Any, flow: ClientFlow) -> None:
        self._send = send
        self._flow = flow

    async def send(self, frame: str) -> None:
        flow = self._flow
        if not flow.writable:
            await flow.wait_writable()
        await self._send({"type": "websocket.send", "text": frame})

    async def close(self, code: int, reason: str) -> None:
        if not self._flow.close(code, reason):
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})


class DatabaseHooks:
    """Metering and bookkeeping of one session, through the relay services."""

    def __init__(self, grant: RelayGrant, layer: BaseChannelLayer | None) -> None:
        self.grant = grant
        self.layer = layer

    async def _broadcast(self, group: str, message: str) -> None:
        """Tell the tenant's (or key's) other live sessions, in any process, that a quota ran out."""
        if self.layer is None:
            return
        try:
            await self.layer.group_send(
                group,
                {
                    "type": TERMINATE,
                    "reason": EndReason.QUOTA_EXCEEDED,
                    "tenant_id": self.grant.tenant_id,
                    "message": message,
                },
            )
        except Exception:
            logger.exception("quota broadcast failed tenant=%s", self.grant.tenant_id)

    async def response_done(
        self, *, response_id: str, usage: dict[str, Any] | None, audio_in_ms: int, audio_out_ms: int
    ) -> Cutoff | None:
        outcome = await in_database(
            relay_session_meter,
            session_id=self.grant.session_id,
            response_id=response_id,
            usage=usage,
            audio_in_ms=audio_in_ms,
            audio_out_ms=audio_out_ms,
        )
        if outcome.tenant_exhausted:
            message = quota_message(outcome.tenant_exhausted)
            await self._broadcast(GROUP_TENANT.format(self.grant.tenant_id), message)
            return quota_cutoff(message)
        if outcome.key_exhausted:
            message = quota_message(outcome.key_exhausted, for_key=True)
            if self.grant.api_key_id is not None:
                await self._broadcast(GROUP_KEY.format(self.grant.api_key_id), message)
            return quota_cutoff(message)
        ceiling = self.grant.cost_ceiling_usd
        if ceiling is not None and outcome.session_cost_usd >= ceiling:
            return Cutoff(
                EndReason.COST_CEILING,
                CLOSE_QUOTA,
                f"This session reached its cost ceiling of {ceiling} USD.",
                "session_cost_limit_reached",
                "insufficient_quota",
            )
        return None

    async def heartbeat(self, stats: SessionStats) -> Cutoff | None:
        pending = (
            int(stats.audio_in_ms)
            - stats.audio_in_charged_ms
            + int(stats.audio_out_ms)
            - stats.audio_out_charged_ms
        )
        outcome = await database_sync_to_async(relay_session_heartbeat)(
            session_id=self.grant.session_id,
            frames_in=stats.frames_in,
            frames_out=stats.frames_out,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            audio_in_ms=int(stats.audio_in_ms),
            audio_out_ms=int(stats.audio_out_ms),
            pending_audio_ms=pending,
            upstream_session_id=stats.upstream_session_id,
        )
        if not outcome.active:
            return Cutoff(
                EndReason.STALE,
                CLOSE_UPSTREAM_FAILED,
                "The platform lost track of this session. Reconnect to continue.",
                "session_lost",
                "server_error",
            )
        if outcome.revoked:
            return termination_cutoff(outcome.revoked)
        if outcome.tenant_exhausted:
            return quota_cutoff(quota_message(outcome.tenant_exhausted))
        if outcome.key_exhausted:
            return quota_cutoff(quota_message(outcome.key_exhausted, for_key=True))
        return None

    async def ended(
        self, stats: SessionStats, *, reason: str, close_code: int | None, audio_in_ms: int, audio_out_ms: int
    ) -> None:
        await in_database(
            relay_session_end,
            session_id=self.grant.session_id,
            reason=reason,
            close_code=close_code,
            frames_in=stats.frames_in,
            frames_out=stats.frames_out,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            audio_in_ms_total=int(stats.audio_in_ms),
            audio_out_ms_total=int(stats.audio_out_ms),
            audio_in_ms=audio_in_ms,
            audio_out_ms=audio_out_ms,
            upstream_session_id=stats.upstream_session_id,
        )


class RelayConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels has no type hints
    """Channels' own dispatch loop is replaced by a plain one: Channels 4.3 hops to a worker thread
    for `close_old_connections()` before every message and starts a new task per message, which
    on a path carrying 50 audio frames a second per session costs more than relaying them. This
    consumer reaches the database only through services in `database_sync_to_async` (which
    manage connections themselves); channel-layer control messages get a task of their own."""

    session: RelaySession | None = None
    grant: RelayGrant | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel() if self.channel_layer is not None else ""
        self._flow = flow_for(send, receive, backlog_limit=settings.RELAY_INBOUND_QUEUE)
        self._main: asyncio.Task[Any] | None = asyncio.current_task()
        self._abandoned = False
        self._joined: tuple[str, ...] = ()
        control: asyncio.Task[None] | None = None
        try:
            message = await receive()
            if message.get("type") != "websocket.connect" or not await self._open():
                return
            if self.channel_layer is not None:
                control = asyncio.create_task(self._control())
            await self._relay(receive)
        except asyncio.CancelledError:
            if self._abandoned:
                return  # we stopped waiting for a client that never answered our close
            if self.session is not None:  # daphne cancels every application when it shuts down
                await self.session.server_shutdown()
            raise
        finally:
            self._main = None  # nothing left to abandon
            if control is not None:
                control.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control
            await self._leave_groups()
            self._flow.detach()

    async def _open(self) -> bool:
        credential, subprotocol = handshake_credential(self.scope)
        client = self.scope.get("client")
        # one request id per socket (the caller's X-Request-Id when sane), for its logs and audit rows
        header = next((v for k, v in self.scope.get("headers") or [] if k == b"x-request-id"), b"")
        request_id_var.set(accept_request_id(header.decode("latin-1") or None))
        try:
            grant = await in_database(
                relay_session_open,
                credential=credential,
                model=query_value(self.scope, "model"),
                client_ip=client[0] if client else None,
                channel_name=self.channel_name,
            )
        except Exception as exc:
            error = as_api_error(exc)  # a refusal; or a lost database: 503 database_unavailable
            if error is None:
                logger.exception("relay handshake failed")
                await self._deny(500, server_error_body(), {})
            else:
                await self._deny(error.status, error.as_body(), error.headers)
            return False
        self.grant = grant
        tenant_id_var.set(str(grant.tenant_id))
        await self._join_groups(grant.groups)
        session = RelaySession(
            plan=SessionPlan(
                session_id=grant.session_id,
                model=grant.model,
                session_config=grant.session_config,
                rules=grant.rules,
                max_session_seconds=grant.max_session_seconds,
            ),
            client=ClientSocket(self.base_send, self._flow),
            connector=grant.connector,
            hooks=DatabaseHooks(grant, self.channel_layer),
            limits=relay_limits(),
        )
        self.session = session
        session.when_finished(self._abandon_later)
        await session.open_upstream()
        try:
            await self.base_send({"type": "websocket.accept", "subprotocol": subprotocol})
        except Exception:  # the client left while upstream was being set up
            await session.client_closed(1006)
            return False
        await session.start()
        return True

    async def _deny(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        if "websocket.http.response" in (self.scope.get("extensions") or {}):
            header_list = [(b"content-type", b"application/json")] + [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
            ]
            await self.base_send(
                {"type": "websocket.http.response.start", "status": status, "headers": header_list}
            )
            await self.base_send({"type": "websocket.http.response.body", "body": orjson.dumps(body)})
        else:
            await self.base_send({"type": "websocket.close"})  # before accept: the server answers 403

    async def _relay(self, receive: Any) -> None:
        session = self.session
        assert session is not None
        flow = self._flow
        from_client = session.from_client
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                flow.received()
                await from_client(message.get("text"), message.get("bytes"))
            elif kind == "websocket.disconnect":
                await session.client_closed(message.get("code"))
                return

    async def _control(self) -> None:
        """Kill-switch messages from the channel layer (never audio)."""
        assert self.channel_layer is not None
        assert self.session is not None
        assert self.grant is not None
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # a Redis hiccup must not end the session: the heartbeat covers the gap
                logger.warning("kill-switch receive failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") != TERMINATE or message.get("tenant_id") not in (
                None,
                self.grant.tenant_id,
            ):
                continue
            await self.session.terminate(
                termination_cutoff(str(message.get("reason") or EndReason.TERMINATED), message.get("message"))
            )
            return

    def _abandon_later(self) -> None:
        """The session has ended and sent its close. A client that never answers it (it stopped
        reading) gets its connection dropped, rather than held until TCP gives up."""
        asyncio.get_running_loop().call_later(ABANDON_AFTER_SECONDS, self._abandon)

    def _abandon(self) -> None:
        main = self._main
        if main is None or main.done():
            return
        if self._flow.abort():  # the server reports the disconnect and the loop ends by itself
            asyncio.get_running_loop().call_later(ABANDON_AFTER_SECONDS, self._stop_waiting)
        else:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        main = self._main
        if main is not None and not main.done():
            self._abandoned = True
            main.cancel()

    async def _join_groups(self, groups: tuple[str, ...]) -> None:
        if self.channel_layer is None:
            return
        try:
            for group in groups:
                await self.channel_layer.group_add(group, self.channel_name)
        except Exception:  # the heartbeat still finds revoked credentials, within seconds
            logger.exception("relay could not join kill-switch groups")
        self._joined = groups

    async def _leave_groups(self) -> None:
        if self.channel_layer is None or not self._joined:
            return
        groups, self._joined = self._joined, ()
        try:
            for group in groups:
                await self.channel_layer.group_discard(group, self.channel_name)
        except Exception:
            logger.exception("relay could not leave kill-switch groups")
