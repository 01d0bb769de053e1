"""The relay core: one client socket and one upstream socket, in plain asyncio.

`RelaySession` knows nothing of Channels or Django. It is handed a `ClientChannel` (how to send to
and close the client), an `UpstreamConnector` (the OpenAI boundary) and `SessionHooks` (metering and
bookkeeping), so tests drive it with fakes. The Channels consumer (relay/consumers.py) only
authenticates the handshake, builds a session and feeds it frames.

Life of a session:
  open_upstream()   before the client is accepted: connect upstream, send the effective session
                    config, wait for `session.created` (and the answer to that config)
  start()           after accept: forward what upstream said so far, start the upstream pump and
                    the watchdog (slow peers, heartbeat, quota checks) and the duration timer
  from_client()     each client frame: checked, then forwarded unchanged (or refused with an error)
  client_closed()   the client went away; terminate()/server_shutdown(): the platform ends it
Every end goes through one path (`_end` → `_finish`), once: an `error` event when the client can
still read one, the close code, upstream closed, usage in flight written, `hooks.ended` called.
The close codes below are the only ones the relay sends; README "Close codes" documents them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from relay import events as ev
from relay.policy import Refusal, SessionRules

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000  # the client closed, or upstream ended the session normally
CLOSE_TERMINATED = 1008  # kill switch: credential revoked, tenant suspended, terminated by an operator
CLOSE_TOO_BIG = 1009  # a client frame over RELAY_MAX_FRAME_BYTES
CLOSE_UPSTREAM_FAILED = 1011  # upstream refused, failed or was lost (after an `error` event)
CLOSE_SERVER_RESTART = 1012  # this server is shutting down; reconnect
CLOSE_CLIENT_TOO_SLOW = 1013  # the client stopped reading and its send buffer stayed full
CLOSE_MAX_DURATION = 4008  # the session reached its maximum duration
CLOSE_QUOTA = 4029  # a tenant quota or the session's cost ceiling is used up

# Channel-layer groups a live session joins, and the one control message type. Only control
# messages travel through the channel layer; audio never does.
GROUP_TENANT = "relay.tenant.{}"
GROUP_KEY = "relay.key.{}"
GROUP_SECRET = "relay.secret.{}"
GROUP_SESSION = "relay.session.{}"
TERMINATE = "relay.terminate"


# An event nested deeper than the relay can check or re-serialize: refused like unreadable JSON
# (an exception here would end the consumer without closing the session).
TOO_DEEP = Refusal("invalid_event", "The event is nested too deeply.")


class EndReason:
    CLIENT_CLOSED = "client_closed"
    CLIENT_GONE = "client_gone"  # no close frame: vanished, or found dead by ping
    CLIENT_TOO_SLOW = "client_too_slow"
    FRAME_TOO_BIG = "frame_too_big"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_LOST = "upstream_lost"
    UPSTREAM_REFUSED = "upstream_refused"
    MAX_DURATION = "max_duration"
    QUOTA_EXCEEDED = "quota_exceeded"
    COST_CEILING = "cost_ceiling"
    TERMINATED = "terminated"
    KEY_REVOKED = "key_revoked"
    SECRET_REVOKED = "secret_revoked"
    TENANT_SUSPENDED = "tenant_suspended"
    SERVER_SHUTDOWN = "server_shutdown"
    STALE = "stale"
    ERROR = "error"


@dataclass(frozen=True)
class Cutoff:
    """Why and how a session ends."""

    reason: str
    close_code: int
    message: str = ""
    error_code: str | None = None
    error_type: str = "invalid_request_error"
    notify_client: bool = True  # send an `error` event before closing


TERMINATION_MESSAGES = {
    EndReason.KEY_REVOKED: "The API key this session was opened with has been revoked.",
    EndReason.SECRET_REVOKED: "The relay token this session was opened with has been revoked.",
    EndReason.TENANT_SUSPENDED: "This tenant has been suspended.",
    EndReason.TERMINATED: "This session was terminated by an administrator.",
}


def quota_cutoff(message: str) -> Cutoff:
    return Cutoff(EndReason.QUOTA_EXCEEDED, CLOSE_QUOTA, message, "insufficient_quota", "insufficient_quota")


def termination_cutoff(reason: str, message: str | None = None) -> Cutoff:
    """The cutoff for a kill-switch message (`relay.terminate` with this reason)."""
    if reason == EndReason.QUOTA_EXCEEDED:
        return quota_cutoff(message or "Your tenant has used up a quota (tokens, cost or audio minutes).")
    text = message or TERMINATION_MESSAGES.get(reason, TERMINATION_MESSAGES[EndReason.TERMINATED])
    return Cutoff(reason[:32] or EndReason.TERMINATED, CLOSE_TERMINATED, text, "session_terminated")


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    audio_in_ms: float = 0.0
    audio_out_ms: float = 0.0
    audio_in_charged_ms: int = 0
    audio_out_charged_ms: int = 0
    responses: int = 0
    upstream_session_id: str = ""

    def take_audio(self) -> tuple[int, int]:
        """Whole milliseconds of audio not charged yet, each way, now marked as charged."""
        audio_in = int(self.audio_in_ms) - self.audio_in_charged_ms
        audio_out = int(self.audio_out_ms) - self.audio_out_charged_ms
        self.audio_in_charged_ms += audio_in
        self.audio_out_charged_ms += audio_out
        return audio_in, audio_out

    def give_back(self, audio_in: int, audio_out: int) -> None:
        """A charge failed: the audio goes back to be charged later (at the latest at the end)."""
        self.audio_in_charged_ms -= audio_in
        self.audio_out_charged_ms -= audio_out


class UpstreamSocket(Protocol):
    async def send(self, frame: str | bytes) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class UpstreamConnector(Protocol):
    async def connect(
        self, *, model: str | None = None, session_id_hint: str | None = None
    ) -> UpstreamSocket: ...


class ClientChannel(Protocol):
    async def send(self, frame: str) -> None:
        """Send one text frame; may wait while the client is not reading."""

    async def close(self, code: int, reason: str) -> None: ...


class SessionHooks(Protocol):
    async def response_done(
        self, *, response_id: str, usage: dict[str, Any] | None, audio_in_ms: int, audio_out_ms: int
    ) -> Cutoff | None:
        """Meter one response; a Cutoff when that used up a quota or the session's ceiling."""

    async def heartbeat(self, stats: SessionStats) -> Cutoff | None:
        """Keep the session record alive; a Cutoff when the session must end."""

    async def ended(
        self, stats: SessionStats, *, reason: str, close_code: int | None, audio_in_ms: int, audio_out_ms: int
    ) -> None:
        """Record the end, release the session's slot and charge the audio not charged yet."""


@dataclass(frozen=True)
class RelayLimits:
    max_event_bytes: int = 1024 * 1024  # bigger client events: `error`, not forwarded, session stays up
    max_frame_bytes: int = 2 * 1024 * 1024  # bigger client frames: `error`, then close 1009
    slow_client_seconds: float = 5.0  # a send to the client pending this long: close 1013
    slow_upstream_seconds: float = 10.0  # a send to upstream pending this long: upstream is lost
    heartbeat_seconds: float = 10.0
    upstream_ready_seconds: float = 10.0  # connect + session.created + our config answered
    close_timeout_seconds: float = 1.0
    tick_seconds: float = 1.0
    meter_drain_seconds: float = 5.0  # at the end, wait this long for usage writes in flight


@dataclass(frozen=True)
class SessionPlan:
    session_id: str
    model: str
    session_config: dict[str, Any] | None = None  # sent upstream as a session.update before any client event
    rules: SessionRules = field(default_factory=SessionRules)
    max_session_seconds: float | None = None


class ConfigRejected(Exception):
    """Upstream answered the platform's session config with an error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or "session config rejected"))
        self.error = error


def upstream_failure_cutoff(exc: BaseException) -> Cutoff:
    """What the client is told when upstream cannot give it a session. Details stay in the log:
    an upstream message may mention the platform's own key."""
    if isinstance(exc, ConfigRejected):
        return Cutoff(
            EndReason.UPSTREAM_REFUSED,
            CLOSE_UPSTREAM_FAILED,
            "The upstream realtime service rejected this session's configuration.",
            "session_config_rejected",
            "server_error",
        )
    if isinstance(exc, TimeoutError) or getattr(exc, "code", None) == "timeout":
        return Cutoff(
            EndReason.UPSTREAM_REFUSED,
            CLOSE_UPSTREAM_FAILED,
            "The upstream realtime service did not answer in time. Try again.",
            "upstream_timeout",
            "server_error",
        )
    status = getattr(exc, "status", None)
    suffix = f" (HTTP {status})" if isinstance(status, int) else ""
    code = "upstream_rate_limited" if status == 429 else "upstream_unavailable"
    return Cutoff(
        EndReason.UPSTREAM_REFUSED,
        CLOSE_UPSTREAM_FAILED,
        f"The upstream realtime service refused the connection{suffix}. Try again later.",
        code,
        "server_error",
    )


def upstream_gone_cutoff(exc: BaseException) -> Cutoff:
    code = getattr(exc, "code", None)
    if code == CLOSE_NORMAL:
        return Cutoff(EndReason.UPSTREAM_CLOSED, CLOSE_NORMAL, notify_client=False)
    return Cutoff(
        EndReason.UPSTREAM_LOST,
        CLOSE_UPSTREAM_FAILED,
        "The connection to the upstream realtime service was lost.",
        "upstream_disconnected",
        "server_error",
    )


class RelaySession:
    def __init__(
        self,
        *,
        plan: SessionPlan,
        client: ClientChannel,
        connector: UpstreamConnector,
        hooks: SessionHooks,
        limits: RelayLimits | None = None,
    ) -> None:
        self.plan = plan
        self.limits = limits or RelayLimits()
        self.stats = SessionStats()
        self.finished = asyncio.Event()
        self.end_reason: str | None = None
        self.close_code: int | None = None
        self._client = client
        self._connector = connector
        self._hooks = hooks
        self._upstream: UpstreamSocket | None = None
        self._held: list[str | bytes] = []  # upstream events from before the client was accepted
        self._open_failure: Cutoff | None = None
        self._current: dict[str, Any] = {}  # the session as upstream last described it
        self._in_bytes_per_ms = ev.BYTES_PER_MS[ev.DEFAULT_FORMAT]
        self._out_bytes_per_ms = ev.BYTES_PER_MS[ev.DEFAULT_FORMAT]
        self._in_pcm16 = True
        self._client_open = False
        self._ending = False
        self._client_send_since = 0.0
        self._upstream_send_since = 0.0
        self._pump: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._meters: set[asyncio.Task[None]] = set()
        self._expiry: asyncio.TimerHandle | None = None
        self._gone_timer: asyncio.TimerHandle | None = None  # see _client_send_failed
        self._finish_callbacks: list[Callable[[], None]] = []

    @property
    def ending(self) -> bool:
        return self._ending

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the session has fully ended (after `hooks.ended`)."""
        self._finish_callbacks.append(callback)

    # --- opening --------------------------------------------------------------------------------

    async def open_upstream(self) -> bool:
        """Connect upstream and apply the session config. False when that failed: the caller still
        accepts the client and calls start(), which then explains the failure and closes."""
        try:
            async with asyncio.timeout(self.limits.upstream_ready_seconds):
                self._upstream = await self._connector.connect(
                    model=self.plan.model, session_id_hint=self.plan.session_id
                )
                await self._configure(self._upstream)
        except asyncio.CancelledError:
            await self._close_upstream()
            raise
        except Exception as exc:
            logger.warning(
                "upstream refused session=%s model=%s error=%s status=%s",
                self.plan.session_id,
                self.plan.model,
                type(exc).__name__,
                getattr(exc, "status", None),
            )
            self._open_failure = upstream_failure_cutoff(exc)
            await self._close_upstream()
            return False
        return True

    async def _configure(self, upstream: UpstreamSocket) -> None:
        config = self.plan.session_config
        init_id: str | None = None
        if config:
            init_id = f"rtp_config_{self.plan.session_id}"
            await upstream.send(
                orjson.dumps({"type": "session.update", "event_id": init_id, "session": config}).decode()
            )
        created: dict[str, Any] | None = None
        while True:
            frame = await upstream.recv()
            kind = ev.upstream_event_type(frame) if isinstance(frame, str) else None
            if kind == ev.SESSION_CREATED and created is None:
                created = orjson.loads(frame)
                self._adopt(created.get("session"))
                if init_id is None:
                    self._held.insert(0, frame)
                    return
            elif kind == ev.SESSION_UPDATED and init_id is not None and created is not None:
                # Our config is in force. The client sees one `session.created` carrying it, as if it
                # had been there from the start; the reply to a config it never sent is not shown.
                session = orjson.loads(frame).get("session")
                self._adopt(session)
                self._held.insert(0, orjson.dumps({**created, "session": session}).decode())
                return
            elif kind == ev.ERROR and init_id is not None:
                error = orjson.loads(frame).get("error") or {}
                if error.get("event_id") == init_id:
                    raise ConfigRejected(error)
                self._held.append(frame)
            else:
                self._held.append(frame)

    def _adopt(self, session: Any) -> None:
        """Track the session config upstream reports: locked fields compare against it, audio is
        counted in its formats."""
        if not isinstance(session, dict):
            return
        self._current = session
        session_id = session.get("id")
        if isinstance(session_id, str):
            self.stats.upstream_session_id = session_id[:64]
        in_format = ev.audio_format_type(session, "input")
        self._in_bytes_per_ms = ev.BYTES_PER_MS.get(in_format, ev.BYTES_PER_MS[ev.DEFAULT_FORMAT])
        self._in_pcm16 = in_format == ev.DEFAULT_FORMAT
        out_format = ev.audio_format_type(session, "output")
        self._out_bytes_per_ms = ev.BYTES_PER_MS.get(out_format, ev.BYTES_PER_MS[ev.DEFAULT_FORMAT])

    async def start(self) -> None:
        """The client has been accepted: relay from now on (or explain why not, and close)."""
        self._client_open = True
        if self._open_failure is not None:
            self._end(self._open_failure)
            return
        held, self._held = self._held, []
        for frame in held:
            await self._send_client(frame if isinstance(frame, str) else frame.decode(errors="replace"))
        if self._ending:
            return
        self._pump = asyncio.create_task(self._pump_upstream(), name=f"relay-pump-{self.plan.session_id}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"relay-watch-{self.plan.session_id}")
        if self.plan.max_session_seconds:
            self._expiry = asyncio.get_running_loop().call_later(self.plan.max_session_seconds, self._expire)

    # --- client → upstream ----------------------------------------------------------------------

    async def from_client(self, text: str | None = None, data: bytes | None = None) -> None:
        if self._ending:
            return
        stats = self.stats
        stats.frames_in += 1
        if text is not None:
            size = len(text)
            if size * 4 > self.limits.max_event_bytes:  # non-ASCII could make it bigger in bytes
                size = len(text.encode())
            stats.bytes_in += size
            if not await self._size_ok(size):
                return
            checked = self._inspect(text)
        elif data is not None:
            stats.bytes_in += len(data)
            checked = self._wrap_binary(data)
            if isinstance(checked, str) and not await self._size_ok(len(checked)):
                return
        else:
            return
        if isinstance(checked, tuple):
            refusal, client_event_id = checked
            await self._refuse(refusal, client_event_id)
            return
        upstream = self._upstream
        if upstream is None:
            return
        self._upstream_send_since = time.monotonic()
        try:
            await upstream.send(checked)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._end(upstream_gone_cutoff(exc))
        finally:
            self._upstream_send_since = 0.0

    async def _size_ok(self, size: int) -> bool:
        if size > self.limits.max_frame_bytes:
            self._end(
                Cutoff(
                    EndReason.FRAME_TOO_BIG,
                    CLOSE_TOO_BIG,
                    f"The frame of {size} bytes exceeds the limit of {self.limits.max_frame_bytes} "
                    "bytes; the connection is closed.",
                    "frame_too_large",
                )
            )
            return False
        if size > self.limits.max_event_bytes:
            await self._refuse(
                Refusal(
                    "event_too_large",
                    f"The event of {size} bytes exceeds the limit of "
                    f"{self.limits.max_event_bytes} bytes; it was not forwarded.",
                ),
                None,
            )
            return False
        return True

    def _inspect(self, text: str) -> str | tuple[Refusal, str | None]:
        """The frame to forward (the same string unless the policy rewrote it), or why not."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Refusal("invalid_event", "The event is not valid JSON."), None
        if not isinstance(event, dict):
            return Refusal("invalid_event", "The event must be a JSON object."), None
        kind = event.get("type")
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        if kind == ev.APPEND:  # the hot path: 50 a second per session
            audio = event.get("audio")
            if not isinstance(audio, str):
                return Refusal(
                    "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
                ), client_event_id
            size = ev.decoded_audio_size(audio)
            if size is None:
                return Refusal(
                    "invalid_audio", "The 'audio' field is not valid base64.", "audio"
                ), client_event_id
            if self._in_pcm16 and size % 2:
                return Refusal(
                    "invalid_audio", "PCM16 audio must have an even number of bytes.", "audio"
                ), client_event_id
            if not ev.plain_append(text) and (refusal := self._duplicates(text)):
                return refusal, client_event_id
            self.stats.audio_in_ms += size / self._in_bytes_per_ms
            return text
        if not isinstance(kind, str):
            return Refusal("invalid_event", "The 'type' field is missing.", "type"), client_event_id
        if kind not in ev.CLIENT_EVENT_TYPES:
            return Refusal(
                "invalid_value",
                f"Invalid value: '{kind[:100]}'. Supported values are: "
                + ", ".join(f"'{t}'" for t in sorted(ev.CLIENT_EVENT_TYPES))
                + ".",
                "type",
            ), client_event_id
        refusal = self._duplicates(text)
        if refusal is not None:
            return refusal, client_event_id
        rules = self.plan.rules
        if kind == "session.update":
            verdict = rules.check_session_update(event, self._current)
        elif kind == "response.create":
            verdict = rules.check_response_create(event, self._current)
        elif kind == "conversation.item.create":
            verdict = rules.check_item_create(event)
        else:
            return text
        if verdict.refusal is not None:
            return verdict.refusal, client_event_id
        if verdict.rewritten is not None:
            try:
                return orjson.dumps(verdict.rewritten).decode()
            except orjson.JSONEncodeError:  # orjson writes at most 254 levels (it reads 1024)
                return TOO_DEEP, client_event_id
        return text

    @staticmethod
    def _duplicates(text: str) -> Refusal | None:
        try:
            key = ev.has_duplicate_keys(text)
        except RecursionError:  # json's parser stops near 1000 levels, before orjson's 1024
            return TOO_DEEP
        if key is None:
            return None
        return Refusal("duplicate_key", f"The key '{key[:100]}' appears twice in one object.", key[:100])

    def _wrap_binary(self, data: bytes) -> str | tuple[Refusal, str | None]:
        """A binary frame is raw audio in the session's input format."""
        if self._in_pcm16 and len(data) % 2:
            return Refusal("invalid_audio", "PCM16 audio must have an even number of bytes."), None
        self.stats.audio_in_ms += len(data) / self._in_bytes_per_ms
        return ev.wrap_audio(data)

    async def _refuse(self, refusal: Refusal, client_event_id: str | None) -> None:
        await self._send_client(
            ev.error_event(
                message=refusal.message,
                code=refusal.code,
                param=refusal.param,
                client_event_id=client_event_id,
            )
        )

    async def _send_client(self, frame: str) -> None:
        if not self._client_open:
            return
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        # the slow-client clock runs for the relay's own errors too: a client that floods refused
        # events and never reads them must not hold its session (and its reads) forever
        clock_started = not self._client_send_since
        if clock_started:
            self._client_send_since = time.monotonic()
        try:
            await self._client.send(frame)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._client_send_failed()
        finally:
            if clock_started:
                self._client_send_since = 0.0

    def _client_send_failed(self) -> None:
        """A send to the client failed, so its socket is gone. When the client closed on purpose
        while a frame was on its way, the server reports that close right after the failed send:
        give the report `close_timeout_seconds` to name the reason (client_closed) before calling
        the client gone."""
        self._client_open = False
        if self._gone_timer is None and self._finisher is None:
            self._gone_timer = asyncio.get_running_loop().call_later(
                self.limits.close_timeout_seconds,
                self._end,
                Cutoff(EndReason.CLIENT_GONE, CLOSE_NORMAL, notify_client=False),
            )

    # --- upstream → client ----------------------------------------------------------------------

    async def _pump_upstream(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        send = self._client.send
        stats = self.stats
        while True:
            try:
                frame = await upstream.recv()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._end(upstream_gone_cutoff(exc))
                return
            if isinstance(frame, str):
                kind = ev.upstream_event_type(frame)
                if kind == ev.AUDIO_DELTA:
                    stats.audio_out_ms += ev.audio_delta_bytes(frame) / self._out_bytes_per_ms
                elif kind in ev.PARSED_UPSTREAM_TYPES:
                    self._on_upstream_event(kind, frame)
            else:
                frame = frame.decode(errors="replace")  # upstream defines no binary frames
            stats.frames_out += 1
            stats.bytes_out += len(frame)
            self._client_send_since = time.monotonic()
            try:
                await send(frame)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._client_send_failed()
                return
            self._client_send_since = 0.0

    def _on_upstream_event(self, kind: str | None, frame: str) -> None:
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return
        if kind in (ev.SESSION_CREATED, ev.SESSION_UPDATED):
            self._adopt(event.get("session"))
        elif kind == ev.RESPONSE_DONE:
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                usage = response.get("usage")
                self._meter(response["id"], usage if isinstance(usage, dict) else None)
        elif kind == ev.ERROR:
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            logger.info("upstream error event session=%s code=%s", self.plan.session_id, error.get("code"))

    def _meter(self, response_id: str, usage: dict[str, Any] | None) -> None:
        """Charge one response now (not at close), in its own task so forwarding never waits."""
        audio_in, audio_out = self.stats.take_audio()
        self.stats.responses += 1
        task = asyncio.create_task(self._record(response_id[:100], usage, audio_in, audio_out))
        self._meters.add(task)
        task.add_done_callback(self._meters.discard)

    async def _record(
        self, response_id: str, usage: dict[str, Any] | None, audio_in: int, audio_out: int
    ) -> None:
        try:
            cutoff = await self._hooks.response_done(
                response_id=response_id, usage=usage, audio_in_ms=audio_in, audio_out_ms=audio_out
            )
        except Exception:
            logger.exception("metering failed session=%s response=%s", self.plan.session_id, response_id)
            self.stats.give_back(audio_in, audio_out)
            return
        if cutoff is not None:
            self._end(cutoff)

    # --- time ------------------------------------------------------------------------------------

    async def _watch(self) -> None:
        limits = self.limits
        next_beat = time.monotonic() + limits.heartbeat_seconds
        while True:
            await asyncio.sleep(limits.tick_seconds)
            now = time.monotonic()
            if self._client_send_since and now - self._client_send_since > limits.slow_client_seconds:
                logger.info("client too slow session=%s", self.plan.session_id)
                self._end(Cutoff(EndReason.CLIENT_TOO_SLOW, CLOSE_CLIENT_TOO_SLOW, notify_client=False))
                return
            if self._upstream_send_since and now - self._upstream_send_since > limits.slow_upstream_seconds:
                self._end(
                    Cutoff(
                        EndReason.UPSTREAM_LOST,
                        CLOSE_UPSTREAM_FAILED,
                        "The upstream realtime service stopped accepting events.",
                        "upstream_disconnected",
                        "server_error",
                    )
                )
                return
            if now >= next_beat:
                next_beat = now + limits.heartbeat_seconds
                try:
                    cutoff = await self._hooks.heartbeat(self.stats)
                except Exception:
                    logger.exception("heartbeat failed session=%s", self.plan.session_id)
                    continue
                if cutoff is not None:
                    self._end(cutoff)
                    return

    def _expire(self) -> None:
        seconds = int(self.plan.max_session_seconds or 0)
        span = f"{seconds // 60} minutes" if seconds % 60 == 0 else f"{seconds} seconds"
        self._end(
            Cutoff(
                EndReason.MAX_DURATION,
                CLOSE_MAX_DURATION,
                f"Your session hit the maximum duration of {span}.",
                "session_expired",
            )
        )

    # --- ending ---------------------------------------------------------------------------------

    async def client_closed(self, code: int | None) -> None:
        """The client's socket is gone (a close frame, or the server lost it: 1006)."""
        self._client_open = False
        # 1000/1001 come from a close frame; servers report a lost connection as 1006 (daphne) or
        # 1005 (uvicorn, which also uses it for a close frame without a code).
        # uvicorn reports its own shutdown as 1012, having sent that close to the client itself.
        if code == CLOSE_SERVER_RESTART:
            reason = EndReason.SERVER_SHUTDOWN
        else:
            reason = EndReason.CLIENT_CLOSED if code in (1000, 1001) else EndReason.CLIENT_GONE
        self._end(Cutoff(reason, code or 1006, notify_client=False))
        await self.finished.wait()

    async def terminate(self, cutoff: Cutoff) -> None:
        self._end(cutoff)
        await self.finished.wait()

    async def server_shutdown(self) -> None:
        self._end(
            Cutoff(
                EndReason.SERVER_SHUTDOWN,
                CLOSE_SERVER_RESTART,
                "The server is restarting. Reconnect to continue.",
                "server_shutting_down",
                "server_error",
            )
        )
        await self.finished.wait()

    def _end(self, cutoff: Cutoff) -> None:
        """End the session, once; safe to call from any task, including the ones it stops."""
        if self._finisher is not None:
            return
        self._ending = True
        self._finisher = asyncio.create_task(self._finish(cutoff), name=f"relay-end-{self.plan.session_id}")

    async def _finish(self, cutoff: Cutoff) -> None:
        self.end_reason = cutoff.reason
        self.close_code = cutoff.close_code
        if self._expiry is not None:
            self._expiry.cancel()
        if self._gone_timer is not None:
            self._gone_timer.cancel()
        tasks = [t for t in (self._pump, self._watchdog) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if self._client_open:
                self._client_open = False
                timeout = self.limits.close_timeout_seconds
                if cutoff.notify_client and cutoff.message:
                    frame = ev.error_event(
                        message=cutoff.message, code=cutoff.error_code, error_type=cutoff.error_type
                    )
                    await _quietly(self._client.send(frame), timeout)
                await _quietly(self._client.close(cutoff.close_code, cutoff.reason), timeout)
            await self._close_upstream()
            if self._meters:
                await asyncio.wait(set(self._meters), timeout=self.limits.meter_drain_seconds)
            audio_in, audio_out = self.stats.take_audio()
            await self._hooks.ended(
                self.stats,
                reason=cutoff.reason,
                close_code=cutoff.close_code,
                audio_in_ms=audio_in,
                audio_out_ms=audio_out,
            )
        except Exception:
            logger.exception("ending session failed session=%s", self.plan.session_id)
        finally:
            for task in list(self._meters):
                task.cancel()
            self.finished.set()
            for callback in self._finish_callbacks:
                callback()
            logger.info(
                "relay session ended session=%s reason=%s code=%s frames_in=%s frames_out=%s",
                self.plan.session_id,
                cutoff.reason,
                cutoff.close_code,
                self.stats.frames_in,
                self.stats.frames_out,
            )

    async def _close_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await _quietly(upstream.close(), self.limits.close_timeout_seconds)

    async def aclose(self) -> None:
        """Stop everything now (used when the hosting task is cancelled before start())."""
        if self._finisher is None:
            self._client_open = False
            self._end(Cutoff(EndReason.SERVER_SHUTDOWN, CLOSE_SERVER_RESTART, notify_client=False))
        await self.finished.wait()


async def _quietly(awaitable: Any, timeout: float) -> None:
    """Await a best-effort close or goodbye: a peer that is gone or stuck must not stop the ending."""
    try:
        await asyncio.wait_for(awaitable, timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.debug("ignored during close: %s", type(exc).__name__)
