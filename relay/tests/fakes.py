"""Test doubles for the relay core: a scripted upstream (OpenAI's side), a client that collects
what it is sent, and hooks that record metering calls. Only the outside world is faked here."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

from relay.core import Cutoff, SessionStats
from upstream.errors import UpstreamClosed


def default_session(model: str = "gpt-realtime") -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_FakeUpstream0000000001",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
    }


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


class FakeUpstream:
    """A scripted realtime server: session.created on connect, session.updated for updates, and a
    response with `deltas` audio deltas of `delta_bytes` each for every response.create."""

    def __init__(
        self,
        *,
        model: str = "gpt-realtime",
        reject_config: bool = False,
        deltas: int = 2,
        delta_bytes: int = 4800,
        usage: dict[str, Any] | None = None,
    ) -> None:
        self.session = default_session(model)
        self.reject_config = reject_config
        self.deltas = deltas
        self.delta_bytes = delta_bytes
        self.usage = USAGE if usage is None else usage
        self.received: list[str] = []  # every frame the relay sent, as sent
        self.closed_with: int | None = None
        self.stall_sends = False
        self._stalled = asyncio.Event()
        self._out: asyncio.Queue[str | BaseException] = asyncio.Queue()
        self._responses = 0
        self._emit(
            {"type": "session.created", "event_id": "event_created0000000000001", "session": self.session}
        )

    def _emit(self, event: dict[str, Any]) -> None:
        self._out.put_nowait(json.dumps(event))

    def emit_raw(self, frame: str) -> None:
        self._out.put_nowait(frame)

    def respond(self, response_id: str | None = None) -> str:
        self._responses += 1
        response_id = response_id or f"resp_Fake{self._responses:017d}"
        self._emit(
            {
                "type": "response.created",
                "event_id": "event_1",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "usage": None,
                },
            }
        )
        chunk = base64.b64encode(b"\x01\x00" * (self.delta_bytes // 2)).decode()
        for i in range(self.deltas):
            self._emit(
                {
                    "type": "response.output_audio.delta",
                    "event_id": f"event_d{i}",
                    "response_id": response_id,
                    "item_id": "item_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": chunk,
                }
            )
        self._emit(
            {
                "type": "response.done",
                "event_id": "event_2",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [],
                    "usage": self.usage,
                },
            }
        )
        return response_id

    def drop(self, code: int = 1006) -> None:
        """The connection ends: 1006 (default) when it breaks, 1000 for a normal close by upstream."""
        self._out.put_nowait(UpstreamClosed(code, "connection lost"))

    # --- UpstreamSocket ----------------------------------------------------------------------

    async def send(self, frame: str | bytes) -> None:
        if self.stall_sends:
            await self._stalled.wait()  # never set: upstream stopped reading
        text = frame if isinstance(frame, str) else frame.decode()
        self.received.append(text)
        event = json.loads(text)
        kind = event.get("type")
        if kind == "session.update":
            if self.reject_config and str(event.get("event_id", "")).startswith("rtp_config_"):
                self._emit(
                    {
                        "type": "error",
                        "event_id": "event_e",
                        "error": {
                            "type": "invalid_request_error",
                            "code": "unknown_parameter",
                            "message": "Unknown parameter",
                            "param": "session.x",
                            "event_id": event.get("event_id"),
                        },
                    }
                )
                return
            self.session = merge(self.session, event.get("session") or {})
            self._emit({"type": "session.updated", "event_id": "event_updated", "session": self.session})
        elif kind == "response.create":
            self.respond()

    async def recv(self) -> str | bytes:
        item = await self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = code
            self._out.put_nowait(UpstreamClosed(code, reason))

    def client_events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, self.received) if e.get("type") == kind]


class FakeConnector:
    def __init__(
        self,
        upstream: FakeUpstream | None = None,
        *,
        error: BaseException | None = None,
        delay: float = 0.0,
        **upstream_kwargs: Any,
    ) -> None:
        self.upstream = upstream
        self.error = error
        self.delay = delay
        self.upstream_kwargs = upstream_kwargs
        self.sockets: list[FakeUpstream] = []
        self.calls: list[dict[str, Any]] = []

    async def connect(
        self, *, model: str | None = None, session_id_hint: str | None = None, call_id: str | None = None
    ) -> FakeUpstream:
        self.calls.append({"model": model, "session_id_hint": session_id_hint})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        socket = (
            self.upstream
            if self.upstream is not None and not self.sockets
            else FakeUpstream(model=model or "gpt-realtime", **self.upstream_kwargs)
        )
        self.sockets.append(socket)
        return socket


class ListClient:
    """Collects frames the relay sends; `reading = False` makes sends hang like a full socket."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.closed_at: float | None = None
        self._readable = asyncio.Event()
        self._readable.set()
        self._arrived = asyncio.Event()

    @property
    def reading(self) -> bool:
        return self._readable.is_set()

    @reading.setter
    def reading(self, value: bool) -> None:
        if value:
            self._readable.set()
        else:
            self._readable.clear()

    async def send(self, frame: str) -> None:
        await self._readable.wait()
        self.frames.append(frame)
        self._arrived.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.closed_at = asyncio.get_running_loop().time()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(f) for f in self.frames]
        return [e for e in parsed if kind is None or e.get("type") == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 2.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.events(kind)) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.events(kind)


class RecordingHooks:
    def __init__(self) -> None:
        self.responses: list[dict[str, Any]] = []
        self.heartbeats: list[SessionStats] = []
        self.ends: list[dict[str, Any]] = []
        self.response_cutoff: Cutoff | None = None
        self.heartbeat_cutoff: Cutoff | None = None
        self.meter_delay = 0.0

    async def response_done(
        self, *, response_id: str, usage: dict[str, Any] | None, audio_in_ms: int, audio_out_ms: int
    ) -> Cutoff | None:
        if self.meter_delay:
            await asyncio.sleep(self.meter_delay)
        self.responses.append(
            {
                "response_id": response_id,
                "usage": usage,
                "audio_in_ms": audio_in_ms,
                "audio_out_ms": audio_out_ms,
            }
        )
        return self.response_cutoff

    async def heartbeat(self, stats: SessionStats) -> Cutoff | None:
        self.heartbeats.append(stats)
        return self.heartbeat_cutoff

    async def ended(
        self, stats: SessionStats, *, reason: str, close_code: int | None, audio_in_ms: int, audio_out_ms: int
    ) -> None:
        self.ends.append(
            {
                "reason": reason,
                "close_code": close_code,
                "audio_in_ms": audio_in_ms,
                "audio_out_ms": audio_out_ms,
                "frames_in": stats.frames_in,
            }
        )
