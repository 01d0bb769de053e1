"""Test support: strict validation of server events against the official SDK's types, a raw
realtime socket that validates everything it receives, and audio in every format."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter
from websockets.asyncio.client import ClientConnection, connect

from upstream.emulator import audio

# --- strict validation ------------------------------------------------------------------------

SDK_UNION = TypeAdapter(RealtimeServerEvent)
_MEMBERS: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
EVENT_MODELS: dict[str, type[BaseModel]] = {
    typing.get_args(member.model_fields["type"].annotation)[0]: member for member in _MEMBERS
}
DISCRIMINATED = TypeAdapter(Annotated[Union[_MEMBERS], Field(discriminator="type")])  # noqa: UP007

# Keys upstream sends that the SDK's types leave undeclared (spec digest §4.3: session.created's
# `session` is typed as the request model, and its id/object/expires_at are tolerated extras).
# `obfuscation` pads streamed input-transcription deltas in upstream's captures (spec digest §4.6).
ALLOWED_UNDECLARED = {
    "session.created.session": {"id", "object", "expires_at"},
    "session.updated.session": {"id", "object", "expires_at"},
    "conversation.item.input_audio_transcription.delta": {"obfuscation"},
}


def undeclared_keys(model: BaseModel, path: str) -> list[str]:
    """Every key, at any depth, that the SDK model does not declare (beyond the allowed ones)."""
    found = [
        f"{path}.{key}" for key in (model.model_extra or {}) if key not in ALLOWED_UNDECLARED.get(path, set())
    ]
    for name in type(model).model_fields:
        found += _undeclared_in(getattr(model, name), f"{path}.{name}")
    return found


def _undeclared_in(value: Any, path: str) -> list[str]:
    if isinstance(value, BaseModel):
        return undeclared_keys(value, path)
    if isinstance(value, list):
        return [key for index, item in enumerate(value) for key in _undeclared_in(item, f"{path}[{index}]")]
    return []


def strict_event(event: dict[str, Any]) -> BaseModel:
    """Validate one server event three ways: the SDK's own union and a discriminated union (strict
    pydantic), and its own model (strict, with no undeclared keys anywhere)."""
    SDK_UNION.validate_python(event, strict=True)
    DISCRIMINATED.validate_python(event, strict=True)
    model = EVENT_MODELS[event["type"]].model_validate(event, strict=True)
    extra = [key.split(".", 2)[-1] for key in undeclared_keys(model, event["type"])]
    assert not extra, f"{event['type']} carries keys the SDK does not declare: {extra}"
    return model


CAPTURES: dict[str, Any] = json.loads((Path(__file__).parent / "data" / "openai_captures.json").read_text())[
    "captures"
]


# --- audio ------------------------------------------------------------------------------------

FORMATS = {"pcm": audio.PCM, "pcmu": audio.PCMU, "pcma": audio.PCMA}
FORMAT_OBJECTS = {
    "pcm": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}


def speech(ms: int, fmt: str = "pcm", *, amplitude: float = 0.3, frequency: int = 300) -> bytes:
    """A loud tone: speech to server VAD at its default threshold."""
    f = FORMATS[fmt]
    n = f.sample_rate * ms // 1000
    samples = [
        int(32767 * amplitude * math.sin(2 * math.pi * frequency * i / f.sample_rate)) for i in range(n)
    ]
    from array import array

    return audio.from_linear(array("h", samples), f)


def silence(ms: int, fmt: str = "pcm") -> bytes:
    return speech(ms, fmt, amplitude=0.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pcm16_samples(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}h", data))


# --- a raw realtime socket --------------------------------------------------------------------


class RawSocket:
    """The client end of a realtime socket. Every event received is validated strictly."""

    def __init__(self, ws: ClientConnection, *, validate: bool = True) -> None:
        self.ws = ws
        self.validate = validate
        self.events: list[dict[str, Any]] = []

    async def send(self, event_type: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, **fields}))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        event = json.loads(frame)
        if self.validate:
            strict_event(event)
        self.events.append(event)
        return event

    async def until(self, event_type: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Events up to and including the next `event_type`. The generous timeout only matters when
        the machine is loaded (CI shares two cores); a passing run never waits for it."""
        seen = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                seen.append(event)
                if event["type"] == event_type:
                    return seen

    async def append(self, data: bytes, *, chunk_ms: int = 20, fmt: str = "pcm") -> None:
        step = FORMATS[fmt].bytes_for_ms(chunk_ms)
        for start in range(0, len(data), step):
            await self.send("input_audio_buffer.append", audio=b64(data[start : start + step]))

    async def quiet(self, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Whatever arrives within `seconds` (to check that nothing more was sent)."""
        seen = []
        try:
            while True:
                seen.append(await self.next(seconds))
        except TimeoutError:
            return seen


@asynccontextmanager
async def realtime(
    emulator: Any,
    *,
    query: str = "model=gpt-realtime",
    key: str | None = None,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    validate: bool = True,
) -> AsyncIterator[RawSocket]:
    all_headers = {"Authorization": f"Bearer {key or emulator.api_key}"} if key != "" else {}
    all_headers.update(headers or {})
    async with connect(
        f"{emulator.ws_url}?{query}",
        additional_headers=all_headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        max_size=None,
        max_queue=None,  # tests often stop reading mid-response; never stall the close handshake
    ) as ws:
        yield RawSocket(ws, validate=validate)
