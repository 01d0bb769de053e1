"""Realtime wire-format helpers for the relay's hot path: find an event's type, count audio, build
error events. Pure Python, no Django.

The relay forwards frames as they came. It reads only what it needs: the type of each upstream
event (from the first bytes of the frame when it is there, which it is for OpenAI and the
emulator), the length of an audio delta's base64 (never decoded), and a full parse of the few
events that matter (`session.*`, `response.done`, `error`).
"""

from __future__ import annotations

import binascii
import json
import re
import secrets
import string
from typing import Any

import orjson

APPEND = "input_audio_buffer.append"
AUDIO_DELTA = "response.output_audio.delta"
RESPONSE_DONE = "response.done"
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
ERROR = "error"

CLIENT_EVENT_TYPES = frozenset(
    {
        "session.update",
        APPEND,
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
    }
)
# Upstream events the relay parses fully; everything else is forwarded without being parsed.
PARSED_UPSTREAM_TYPES = frozenset({SESSION_CREATED, SESSION_UPDATED, RESPONSE_DONE, ERROR})

# `{"type":"…"` at the start of a frame, or right after an `event_id`: how OpenAI and the emulator
# write every event. Anything else falls back to a real parse.
_LEADING_TYPE = re.compile(r'\{\s*(?:"event_id"\s*:\s*"[^"\\]*"\s*,\s*)?"type"\s*:\s*"([^"\\]+)"')
_DELTA_KEY = re.compile(r'"delta"\s*:\s*"')

_ID_ALPHABET = string.ascii_letters + string.digits

# Bytes per millisecond of each GA audio format (audio/pcm is 24 kHz 16-bit mono; G.711 is 8 kHz
# 8-bit). Unknown formats count as PCM, the default.
BYTES_PER_MS = {"audio/pcm": 48.0, "audio/pcmu": 8.0, "audio/pcma": 8.0}
DEFAULT_FORMAT = "audio/pcm"


def event_id() -> str:
    return "event_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(21))


def upstream_event_type(frame: str) -> str | None:
    """The type of a (trusted) upstream event, without parsing it when the type leads the frame."""
    match = _LEADING_TYPE.match(frame)
    if match is not None:
        return match.group(1)
    try:
        event = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    kind = event.get("type") if isinstance(event, dict) else None
    return kind if isinstance(kind, str) else None


def base64_length(text: str, start: int, end: int) -> int:
    """Decoded size of the base64 in text[start:end], from its length and padding alone."""
    size = end - start
    padding = (1 if size and text[end - 1] == "=" else 0) + (1 if size > 1 and text[end - 2] == "=" else 0)
    return max(0, size // 4 * 3 - padding)


def audio_delta_bytes(frame: str) -> int:
    """Bytes of audio in a `response.output_audio.delta` frame, counted without decoding it."""
    match = _DELTA_KEY.search(frame)
    if match is None:
        return 0
    start = match.end()
    end = frame.find('"', start)
    return base64_length(frame, start, end) if end > 0 else 0


def audio_format_type(session: Any, direction: str) -> str:
    """`audio.<direction>.format.type` of a session object (the default when absent)."""
    try:
        kind = session["audio"][direction]["format"]["type"]
    except (KeyError, TypeError):
        return DEFAULT_FORMAT
    return kind if isinstance(kind, str) else DEFAULT_FORMAT


def decoded_audio_size(audio: str) -> int | None:
    """Size of a base64 audio payload, or None when it is not valid (padded, standard) base64."""
    try:
        return len(binascii.a2b_base64(audio, strict_mode=True))
    except binascii.Error:
        return None


def plain_append(frame: str) -> bool:
    """True when an append frame cannot hide a second meaning: one `type`, one `audio`, and no
    escapes (which could spell a key another parser reads differently). Then it is forwarded
    as is; otherwise it gets the strict duplicate-key check first."""
    return "\\" not in frame and frame.count('"type"') == 1 and frame.count('"audio"') == 1


class DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def has_duplicate_keys(frame: str) -> str | None:
    """The first key that appears twice in one object, at any depth (None if there is none).

    Parsers disagree about duplicates (the last wins here, the first elsewhere), so a client could
    show the relay one value and upstream another; such events are refused."""
    try:
        json.loads(frame, object_pairs_hook=_no_duplicates)
    except DuplicateKeyError as exc:
        return str(exc)
    except ValueError:
        return None  # not JSON: orjson has already said so
    return None


def error_event(
    *,
    message: str,
    code: str | None,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    client_event_id: str | None = None,
) -> str:
    """An `error` server event in OpenAI's shape (the client's event id echoed in error.event_id)."""
    return orjson.dumps(
        {
            "type": ERROR,
            "event_id": event_id(),
            "error": {
                "type": error_type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            },
        }
    ).decode()


def wrap_audio(data: bytes) -> str:
    """A raw binary client frame as the `input_audio_buffer.append` event it stands for."""
    return (
        '{"type":"input_audio_buffer.append","audio":"'
        + binascii.b2a_base64(data, newline=False).decode()
        + '"}'
    )
