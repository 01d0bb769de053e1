"""One emulated realtime session: the protocol behind `WS /v1/realtime`.

Plain asyncio, no ASGI and no Django: it gets frames through `handle_text`/`handle_bytes` and
talks back through the `send`/`close` callables it is given. What it does, in upstream's order:

- `session.created` first, with the full effective config; `session.update` → `session.updated`
  (only the fields sent change; a bad update changes nothing and gets an `error`);
- input audio: `append` decodes base64 in the session's input format (pcm 24 kHz 16-bit, G.711
  μ-law/A-law 8 kHz) and feeds server VAD, which works on 10 ms frames of real audio energy:
  `speech_started` (with `prefix_padding_ms`), `speech_stopped` after `silence_duration_ms` of
  quiet, `committed`, the user item's `conversation.item.added`/`.done`, optional input
  transcription, then a response when `create_response` is on; speech during a response cancels
  it (`interrupt_response`). With VAD off, `commit` needs ≥100 ms of audio;
- responses: `response.created`, output item and content part events, transcript deltas
  interleaved with `response.output_audio.delta` chunks of real PCM16/G.711 audio (a tone whose
  pitch follows the voice), the `.done` events, `response.done` with a usage object that follows
  the audio durations and text lengths (user audio 1 token/100 ms, assistant audio 1 token/50 ms,
  text ~4 characters/token, the conversation re-read as input each turn, a cached prefix), then
  `rate_limits.updated`. Text-only responses, function calls (when a tool is required, named, or
  mentioned by the user), out-of-band responses, `max_output_tokens` and cancellation follow the
  same rules as upstream;
- conversation items: create (with `previous_item_id`), retrieve (audio included), truncate, delete;
- `error` events carry the offending client `event_id`; the session ends at the maximum duration
  with a `session_expired` error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from upstream.emulator import audio, schema
from upstream.emulator.faults import SocketFault
from upstream.emulator.schema import InvalidRequest
from upstream.emulator.state import EmulatorState, RecordedConnection, new_id

logger = logging.getLogger(__name__)

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]

VAD_FRAME_MS = 10
VAD_SAMPLE_RATE = 6000  # energy is estimated on this many samples a second (every 4th at 24 kHz)
SPECIAL_TOKENS_PER_MESSAGE = 4
IMAGE_TOKENS = 85
CACHE_BLOCK_TOKENS = 64
MS_PER_USER_AUDIO_TOKEN = 100
MS_PER_ASSISTANT_AUDIO_TOKEN = 50
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


def text_tokens(text: str | None) -> int:
    return math.ceil(len(text) / 4) if text else 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class ResponseRun:
    id: str
    in_band: bool
    params: dict[str, Any]
    context: list[dict[str, Any]]
    cancel_reason: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason


class RealtimeSessionEmulator:
    def __init__(
        self,
        *,
        state: EmulatorState,
        kind: str,
        config: dict[str, Any],
        send: SendText,
        close: Close,
        fault: SocketFault | None = None,
        record: RecordedConnection | None = None,
    ) -> None:
        self.state = state
        self.kind = kind  # "realtime" or "transcription"
        self.config = config  # the effective session config (without id/object/expires_at)
        self._send = send
        self._close = close
        self.fault = fault or SocketFault()
        self.record = record
        self.session_id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.started = time.time()
        self.expires_at = int(self.started + state.config.max_session_seconds)
        self.closed = False
        self.events_sent = 0
        self._malformed_pending = self.fault.malformed_after is not None
        self._tasks: set[asyncio.Task[Any]] = set()
        # conversation
        self.items: list[dict[str, Any]] = []
        self.item_audio: dict[str, bytes] = {}
        self.assistant_audio_produced = False
        self.active: ResponseRun | None = None  # the response writing to the default conversation
        self.responses: dict[str, ResponseRun] = {}
        self._last_input_tokens = (0, 0)  # (text, audio) input of the previous in-band response
        # input audio and VAD
        self.buffer = bytearray()
        self.buffer_start_ms = 0.0  # session audio time of the buffer's first byte
        self.audio_ms = 0.0  # all audio appended this session, in ms
        self._vad_pending = bytearray()
        self.speaking = False
        self.speech_item_id: str | None = None
        self.speech_start_ms = 0.0
        self._silence_ms = 0.0
        self._idle_timer: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.emit("session.created", session=self.session_object())
        self._spawn(self._expire_at_max_duration())

    async def refuse(self, error: InvalidRequest | dict[str, Any], *, code: int) -> None:
        """Answer a connection that cannot have a session with one `error` event, then close."""
        body = error.as_error() if isinstance(error, InvalidRequest) else error
        await self.emit("error", error={**body, "event_id": None})
        await self.close(code, body.get("code") or "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        if self.record is not None:
            self.record.close_code = code
        await self._close(code, reason)
        self.stop()

    def stop(self) -> None:
        """Cancel every background task (responses, timers). Safe to call more than once."""
        self.closed = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("emulator session task failed", exc_info=task.exception())

    async def _expire_at_max_duration(self) -> None:
        seconds = self.state.config.max_session_seconds
        await asyncio.sleep(seconds)
        minutes = seconds / 60
        span = f"{minutes:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
        await self.emit(
            "error",
            error={
                "type": "invalid_request_error",
                "code": "session_expired",
                "message": f"Your session hit the maximum duration of {span}.",
                "param": None,
                "event_id": None,
            },
        )
        await self.close(1000, "session_expired")

    # --- sending ------------------------------------------------------------------------------

    async def emit(self, event_type: str, **fields: Any) -> None:
        if self.closed:
            return
        if self.fault.event_delay:
            await asyncio.sleep(self.fault.event_delay)
        if self.fault.drop_after is not None and self.events_sent >= self.fault.drop_after:
            logger.info("emulator fault: dropping socket after %d events", self.events_sent)
            await self.close(self.fault.drop_code, "emulated failure")
            return
        if self._malformed_pending and self.events_sent >= (self.fault.malformed_after or 0):
            self._malformed_pending = False
            await self._send_text('{"type": "response.output_audio.delta", "event_id": "event_')
        event = {"type": event_type, "event_id": new_id("event"), **fields}
        await self._send_text(orjson.dumps(event).decode())

    async def _send_text(self, text: str) -> None:
        if self.closed:
            return
        self.events_sent += 1
        if self.record is not None and self.state.config.record:
            self.record.sent.append(text)
        await self._send(text)

    async def error(self, exc: InvalidRequest, event_id: str | None) -> None:
        await self.emit("error", error={**exc.as_error(), "event_id": event_id})

    # --- receiving ----------------------------------------------------------------------------

    async def handle_bytes(self, data: bytes) -> None:
        await self.error(
            InvalidRequest(
                "Binary frames are not supported. Send each client event as a JSON text frame.",
                code="invalid_event",
            ),
            None,
        )

    async def handle_text(self, text: str) -> None:
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self.error(
                InvalidRequest(
                    "We could not parse the JSON body of your event. Send each client event as one JSON "
                    "object.",
                    code="invalid_json",
                ),
                None,
            )
            return
        if not isinstance(event, dict):
            await self.error(InvalidRequest("The event must be a JSON object.", code="invalid_event"), None)
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            await self.dispatch(event)
        except InvalidRequest as exc:
            await self.error(exc, event_id)

    async def dispatch(self, event: dict[str, Any]) -> None:
        event_type = event.get("type")
        if "type" not in event:
            raise InvalidRequest("The 'type' field is missing.", code="invalid_event")
        if not isinstance(event_type, str) or event_type not in schema.CLIENT_EVENTS:
            raise schema.invalid_value("type", event_type, list(schema.CLIENT_EVENTS))
        event = schema.validate(schema.CLIENT_EVENTS[event_type], event)
        handler = getattr(self, "on_" + event_type.replace(".", "_"))
        await handler(event)

    # --- session ------------------------------------------------------------------------------

    def session_object(self) -> dict[str, Any]:
        cfg = self.config
        if self.kind == "transcription":
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": self.session_id,
                "expires_at": self.expires_at,
                "audio": {"input": cfg["audio"]["input"]},
                "include": cfg.get("include"),
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": cfg["model"],
            "output_modalities": cfg["output_modalities"],
            "instructions": cfg["instructions"],
            "tools": cfg["tools"],
            "tool_choice": cfg["tool_choice"],
            "max_output_tokens": cfg["max_output_tokens"],
            "tracing": cfg["tracing"],
            "prompt": cfg["prompt"],
            "expires_at": self.expires_at,
            "audio": cfg["audio"],
            "include": cfg.get("include"),
        }

    async def on_session_update(self, event: dict[str, Any]) -> None:
        update = dict(event["session"])
        kind = update.pop("type")
        if kind != self.kind:
            raise InvalidRequest(
                f"Passing a {kind} session update event to a {self.kind} session is not allowed.",
                param="session.type",
                code="invalid_value",
            )
        if "model" in update:
            wanted = schema.MODEL_SNAPSHOTS.get(update["model"], update["model"])
            if wanted != self.config["model"]:
                raise InvalidRequest(
                    "The model of a session cannot be changed once the session has started.",
                    param="session.model",
                    code="invalid_value",
                )
            del update["model"]
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and self.assistant_audio_produced and voice != self.output_voice:
            raise InvalidRequest(
                "Cannot update a conversation's voice if assistant audio is present.",
                param="session.audio.output.voice",
                code="cannot_update_voice",
            )
        if (
            "tracing" in update
            and self.config.get("tracing") is not None
            and update["tracing"] != self.config["tracing"]
        ):
            raise InvalidRequest(
                "Tracing cannot be modified once it is enabled for a session.",
                param="session.tracing",
                code="invalid_value",
            )
        self.config = schema.merge_session(self.config, update)
        await self.emit("session.updated", session=self.session_object())

    @property
    def input_format(self) -> audio.AudioFormat:
        return audio.audio_format(self.config["audio"]["input"]["format"])

    @property
    def output_voice(self) -> str:
        return str(self.config["audio"]["output"]["voice"])

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.config["audio"]["input"]["turn_detection"]
        return td

    # --- input audio and VAD ------------------------------------------------------------------

    async def on_input_audio_buffer_append(self, event: dict[str, Any]) -> None:
        encoded: str = event["audio"]
        if len(encoded) > schema.MAX_APPEND_BYTES * 4 // 3 + 4:
            raise InvalidRequest(
                "Invalid 'audio': the audio in one append may be at most 15 MiB.",
                param="audio",
                code="string_above_max_length",
            )
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "Invalid 'audio'. Expected base64-encoded audio bytes.", param="audio", code="invalid_value"
            ) from None
        fmt = self.input_format
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            raise InvalidRequest(
                f"Invalid 'audio': this is a WAV file. Send raw, headerless audio in the session's input "
                f"format ({fmt.type}).",
                param="audio",
                code="invalid_value",
            )
        if len(data) % fmt.bytes_per_sample:
            raise InvalidRequest(
                f"Invalid 'audio': {fmt.type} audio is made of {fmt.bytes_per_sample}-byte samples, but "
                f"{len(data)} bytes were sent.",
                param="audio",
                code="invalid_value",
            )
        self.buffer += data
        self.audio_ms += fmt.duration_ms(len(data))
        await self._run_vad(data, fmt)

    async def _run_vad(self, data: bytes, fmt: audio.AudioFormat) -> None:
        td = self.turn_detection
        if td is None:
            return
        self._vad_pending += data
        frame_bytes = fmt.bytes_for_ms(VAD_FRAME_MS)
        stride = max(1, fmt.sample_rate // VAD_SAMPLE_RATE)
        threshold = 0.05 * float(td.get("threshold", 0.5))  # RMS (full scale 1.0) that counts as speech
        if td["type"] == "semantic_vad":
            silence_needed = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness")), 500)
            padding = 300
        else:
            silence_needed = int(td.get("silence_duration_ms", 200))
            padding = int(td.get("prefix_padding_ms", 300))
        # session time of the end of the audio already waiting in _vad_pending
        position = self.audio_ms - fmt.duration_ms(len(self._vad_pending))
        while len(self._vad_pending) >= frame_bytes and not self.closed:
            frame = bytes(self._vad_pending[:frame_bytes])
            del self._vad_pending[:frame_bytes]
            frame_start, position = position, position + VAD_FRAME_MS
            speech = audio.rms(audio.to_linear(frame, fmt), stride=stride) > threshold
            if not self.speaking:
                if speech:
                    await self._speech_started(max(0.0, frame_start - padding), td)
                else:
                    self._trim_buffer(position - padding, fmt)
                continue
            self._silence_ms = 0.0 if speech else self._silence_ms + VAD_FRAME_MS
            if self._silence_ms >= silence_needed:
                await self._speech_stopped(position, td, fmt)

    def _trim_buffer(self, keep_from_ms: float, fmt: audio.AudioFormat) -> None:
        """Outside speech, keep only the padding that may become the start of the next turn."""
        drop = fmt.bytes_for_ms(keep_from_ms - self.buffer_start_ms)
        if drop > 0:
            del self.buffer[:drop]
            self.buffer_start_ms += fmt.duration_ms(drop)

    async def _speech_started(self, start_ms: float, td: dict[str, Any]) -> None:
        self.speaking = True
        self._silence_ms = 0.0
        self.speech_start_ms = start_ms
        self.speech_item_id = new_id("item")
        self._cancel_idle_timer()
        await self.emit(
            "input_audio_buffer.speech_started", audio_start_ms=int(start_ms), item_id=self.speech_item_id
        )
        if self.active is not None and td.get("interrupt_response", True):
            self.active.cancel("turn_detected")

    async def _speech_stopped(self, end_ms: float, td: dict[str, Any], fmt: audio.AudioFormat) -> None:
        item_id = self.speech_item_id or new_id("item")
        self.speaking = False
        self.speech_item_id = None
        await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=int(end_ms), item_id=item_id)
        start = fmt.bytes_for_ms(self.speech_start_ms - self.buffer_start_ms)
        end = fmt.bytes_for_ms(end_ms - self.buffer_start_ms)
        spoken = bytes(self.buffer[max(0, start) : max(0, end)])
        del self.buffer[: max(0, end)]
        self.buffer_start_ms = end_ms
        await self._commit(item_id, spoken, fmt)
        if self.kind == "realtime" and td.get("create_response", True):
            await self._auto_respond()

    async def _auto_respond(self) -> None:
        if self.active is not None:
            # a barge-in cancelled it a moment ago; let it finish its .done events first
            await self.active.finished.wait()
        await self._start_response({}, event_id=None)

    async def on_input_audio_buffer_commit(self, event: dict[str, Any]) -> None:
        fmt = self.input_format
        buffered_ms = fmt.duration_ms(len(self.buffer))
        if buffered_ms < 100:
            raise InvalidRequest(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {buffered_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self.speech_item_id or new_id("item")
        data = bytes(self.buffer)
        self._reset_buffer()
        await self._commit(item_id, data, fmt)

    async def on_input_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        self._reset_buffer()
        await self.emit("input_audio_buffer.cleared")

    def _reset_buffer(self) -> None:
        self.buffer.clear()
        self._vad_pending.clear()
        self.buffer_start_ms = self.audio_ms
        self.speaking = False
        self.speech_item_id = None
        self._silence_ms = 0.0

    async def on_output_audio_buffer_clear(self, event: dict[str, Any]) -> None:
        raise InvalidRequest(
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            param="type",
            code="invalid_value",
        )

    async def _commit(self, item_id: str, data: bytes, fmt: audio.AudioFormat) -> None:
        previous = self.items[-1]["id"] if self.items else None
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self.items.append(item)
        self.item_audio[item_id] = data
        await self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)
        transcription = self.config["audio"]["input"].get("transcription")
        if transcription:
            await self._transcribe(item, fmt.duration_ms(len(data)), transcription)

    async def _transcribe(
        self, item: dict[str, Any], duration_ms: float, transcription: dict[str, Any]
    ) -> None:
        seconds = duration_ms / 1000
        transcript = f"This is an emulated transcript of {seconds:.1f} seconds of speech."
        logprobs = "item.input_audio_transcription.logprobs" in (self.config.get("include") or [])
        words = transcript.split(" ")
        for index, word in enumerate(words):
            delta = word if index == 0 else " " + word
            extra: dict[str, Any] = {}
            if logprobs:
                extra["logprobs"] = [{"token": delta, "logprob": -0.01, "bytes": list(delta.encode())}]
            await self.emit(
                "conversation.item.input_audio_transcription.delta",
                item_id=item["id"],
                content_index=0,
                delta=delta,
                **extra,
                # upstream pads streamed deltas with random characters so their sizes leak nothing
                obfuscation=new_id("x")[2 : 2 + 8 + len(delta) % 8],
            )
        audio_tokens = math.ceil(duration_ms / MS_PER_USER_AUDIO_TOKEN)
        usage: dict[str, Any]
        if transcription.get("model") == "whisper-1":
            usage = {"type": "duration", "seconds": round(seconds, 3)}
        else:
            output_tokens = text_tokens(transcript)
            usage = {
                "type": "tokens",
                "total_tokens": audio_tokens + output_tokens,
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": output_tokens,
            }
        extra = {}
        if logprobs:
            extra["logprobs"] = [{"token": w, "logprob": -0.01, "bytes": list(w.encode())} for w in words]
        item["content"][0]["transcript"] = transcript
        await self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item["id"],
            content_index=0,
            transcript=transcript,
            usage=usage,
            **extra,
        )

    # --- idle timeout -------------------------------------------------------------------------

    def _arm_idle_timer(self, played_ms: float) -> None:
        td = self.turn_detection
        if not td or td.get("type") != "server_vad" or not td.get("idle_timeout_ms"):
            return
        self._cancel_idle_timer()
        self._idle_timer = self._spawn(self._idle_timeout(int(td["idle_timeout_ms"]), played_ms))

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None and self._idle_timer is not asyncio.current_task():
            self._idle_timer.cancel()
        self._idle_timer = None

    async def _idle_timeout(self, idle_ms: int, played_ms: float) -> None:
        armed_at = self.audio_ms
        await asyncio.sleep((idle_ms + played_ms) / 1000 * self.state.config.timer_scale)
        if self.speaking or self.active is not None or self.closed:
            return
        self._idle_timer = None
        item_id = new_id("item")
        end = max(self.audio_ms, armed_at + idle_ms)
        await self.emit(
            "input_audio_buffer.timeout_triggered",
            audio_start_ms=int(armed_at),
            audio_end_ms=int(end),
            item_id=item_id,
        )
        data = bytes(self.buffer)
        self._reset_buffer()
        await self._commit(item_id, data, self.input_format)
        await self._start_response({}, event_id=None)

    # --- conversation items -------------------------------------------------------------------

    def _find(self, item_id: str) -> int:
        for index, item in enumerate(self.items):
            if item["id"] == item_id:
                return index
        raise InvalidRequest(
            f"Item with item_id not found: {item_id}", param="item_id", code="item_not_found"
        )

    async def on_conversation_item_create(self, event: dict[str, Any]) -> None:
        item = dict(event["item"])
        item.pop("object", None)
        if "id" in item and any(existing["id"] == item["id"] for existing in self.items):
            raise InvalidRequest(
                f"Item with id '{item['id']}' already exists.", param="item.id", code="item_already_exists"
            )
        item.setdefault("id", new_id("item"))
        item["status"] = "completed"
        if item["type"] == "message":
            item["content"] = [self._store_content(item["id"], dict(part)) for part in item["content"]]
        if item["type"] == "function_call":
            item.setdefault("call_id", new_id("call"))
        position = len(self.items)
        previous_item_id = event.get("previous_item_id")
        if previous_item_id == "root":
            position = 0
        elif previous_item_id is not None:
            try:
                position = self._find(previous_item_id) + 1
            except InvalidRequest:
                raise InvalidRequest(
                    f"Item with item_id not found: {previous_item_id}",
                    param="previous_item_id",
                    code="item_not_found",
                ) from None
        self.items.insert(position, item)
        previous = self.items[position - 1]["id"] if position > 0 else None
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        await self.emit("conversation.item.done", previous_item_id=previous, item=item)

    def _store_content(self, item_id: str, part: dict[str, Any]) -> dict[str, Any]:
        """Keep audio bytes aside (events never carry them; retrieve does)."""
        if part["type"] == "input_audio":
            encoded = part.pop("audio", None)
            if encoded:
                try:
                    self.item_audio[item_id] = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest(
                        "Invalid 'item.content.audio'. Expected base64-encoded audio bytes.",
                        param="item.content.audio",
                        code="invalid_value",
                    ) from None
            part.setdefault("transcript", None)
        return part

    async def on_conversation_item_retrieve(self, event: dict[str, Any]) -> None:
        item = json.loads(json.dumps(self.items[self._find(event["item_id"])]))
        item["object"] = "realtime.item"
        stored = self.item_audio.get(item["id"])
        if stored is not None:
            for part in item.get("content", []):
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = _b64(stored)
        await self.emit("conversation.item.retrieved", item=item)

    async def on_conversation_item_truncate(self, event: dict[str, Any]) -> None:
        item = self.items[self._find(event["item_id"])]
        index = event["content_index"]
        content = item.get("content", [])
        if (
            item.get("role") != "assistant"
            or index >= len(content)
            or content[index].get("type") != "output_audio"
            or item["id"] not in self.item_audio
        ):
            raise InvalidRequest(
                "Only the audio content of an assistant message can be truncated.",
                param="item_id",
                code="invalid_value",
            )
        fmt = audio.audio_format(self.config["audio"]["output"]["format"])
        data = self.item_audio[item["id"]]
        duration = fmt.duration_ms(len(data))
        if event["audio_end_ms"] > duration:
            raise InvalidRequest(
                f"Audio content of {duration:.0f}ms is shorter than {event['audio_end_ms']}ms.",
                param="audio_end_ms",
                code="invalid_value",
            )
        self.item_audio[item["id"]] = data[: fmt.bytes_for_ms(event["audio_end_ms"])]
        content[index]["transcript"] = None  # upstream drops the transcript of truncated audio
        await self.emit(
            "conversation.item.truncated",
            item_id=item["id"],
            content_index=index,
            audio_end_ms=event["audio_end_ms"],
        )

    async def on_conversation_item_delete(self, event: dict[str, Any]) -> None:
        item = self.items.pop(self._find(event["item_id"]))
        self.item_audio.pop(item["id"], None)
        await self.emit("conversation.item.deleted", item_id=item["id"])

    # --- responses ----------------------------------------------------------------------------

    async def on_response_create(self, event: dict[str, Any]) -> None:
        if self.kind != "realtime":
            raise InvalidRequest(
                "Responses are not available in transcription sessions.", param="type", code="invalid_value"
            )
        params = event.get("response") or {}
        if params.get("conversation", "auto") == "auto" and self.active is not None:
            raise InvalidRequest(
                f"Conversation already has an active response in progress: {self.active.id}. Wait until the "
                "response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        await self._start_response(params, event_id=event.get("event_id"))

    async def on_response_cancel(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id")
        run = self.active if response_id is None else self.responses.get(response_id)
        if run is None or run.finished.is_set() or run.cancel_reason is not None:
            raise InvalidRequest(
                "Cancellation failed: no active response found", code="response_cancel_not_active"
            )
        run.cancel("client_cancelled")

    async def _start_response(self, params: dict[str, Any], *, event_id: str | None) -> None:
        in_band = params.get("conversation", "auto") == "auto"
        if "input" in params:
            context = []
            for entry in params["input"]:
                if entry.get("type") == "item_reference":
                    try:
                        context.append(self.items[self._find(entry["id"])])
                    except InvalidRequest:
                        raise InvalidRequest(
                            f"Item with item_id not found: {entry['id']}",
                            param="response.input",
                            code="item_not_found",
                        ) from None
                else:
                    context.append({"id": new_id("item"), "status": "completed", **entry})
        else:
            context = list(self.items)
        run = ResponseRun(id=new_id("resp"), in_band=in_band, params=params, context=context)
        self.responses[run.id] = run
        if in_band:
            self.active = run
            self._cancel_idle_timer()
        run.task = self._spawn(self._respond(run))

    def _response_object(self, run: ResponseRun, status: str, **extra: Any) -> dict[str, Any]:
        params = run.params
        out = self.config["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": run.id,
            "status": status,
            "status_details": extra.pop("status_details", None),
            "output": extra.pop("output", []),
            "conversation_id": self.conversation_id if run.in_band else None,
            "output_modalities": params.get("output_modalities", self.config["output_modalities"]),
            "max_output_tokens": params.get("max_output_tokens", self.config["max_output_tokens"]),
            "audio": {
                "output": {
                    "format": schema.full_format(
                        params.get("audio", {}).get("output", {}).get("format", out["format"])
                    ),
                    "voice": params.get("audio", {}).get("output", {}).get("voice", out["voice"]),
                }
            },
            "usage": extra.pop("usage", None),
            "metadata": params.get("metadata"),
        }

    async def _respond(self, run: ResponseRun) -> None:
        try:
            await self._respond_inner(run)
        finally:
            run.finished.set()
            if self.active is run:
                self.active = None

    async def _respond_inner(self, run: ResponseRun) -> None:
        created = self._response_object(run, "in_progress")
        await self.emit("response.created", response=created)
        tool = self._tool_to_call(run)
        if tool is not None:
            item, output_tokens = await self._function_call(run, tool)
            audio_ms = 0.0
        else:
            item, output_tokens, audio_ms = await self._message(run, created)
        status, details = "completed", None
        if run.cancel_reason is not None:
            status, details = "cancelled", {"type": "cancelled", "reason": run.cancel_reason}
        elif item.get("status") == "incomplete":
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        usage = self._usage(run, output_tokens)
        done = self._response_object(run, status, status_details=details, output=[item], usage=usage)
        await self.emit("response.done", response=done)
        await self.emit(
            "rate_limits.updated",
            rate_limits=self.state.rate_limits(requests=1, tokens=usage["total_tokens"]),
        )
        if run.in_band and status == "completed":
            self._arm_idle_timer(audio_ms)

    def _tool_to_call(self, run: ResponseRun) -> dict[str, Any] | None:
        tools: list[dict[str, Any]] = [
            t for t in run.params.get("tools", self.config["tools"]) if t.get("type") == "function"
        ]
        choice = run.params.get("tool_choice", self.config["tool_choice"])
        if not tools or choice == "none":
            return None
        last = run.context[-1] if run.context else None
        if last is not None and last.get("type") == "function_call_output":
            return None  # the model answers the function's result in words
        if isinstance(choice, dict):
            return next((t for t in tools if t.get("name") == choice.get("name")), None)
        if choice == "required":
            return tools[0]
        said = " ".join(_texts(last)).lower() if last is not None else ""
        return next((t for t in tools if t.get("name") and t["name"].lower() in said), None)

    async def _output_item_added(self, run: ResponseRun, item: dict[str, Any]) -> str | None:
        await self.emit("response.output_item.added", response_id=run.id, output_index=0, item=item)
        if not run.in_band:
            return None
        previous = self.items[-1]["id"] if self.items else None
        self.items.append(item)
        await self.emit("conversation.item.added", previous_item_id=previous, item=item)
        return previous

    async def _output_item_done(self, run: ResponseRun, item: dict[str, Any], previous: str | None) -> None:
        if run.in_band:
            await self.emit("conversation.item.done", previous_item_id=previous, item=item)
        await self.emit("response.output_item.done", response_id=run.id, output_index=0, item=item)

    async def _function_call(
        self, run: ResponseRun, tool: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[int, int]]:
        arguments = json.dumps(_placeholder_arguments(tool.get("parameters") or {}))
        item: dict[str, Any] = {
            "id": new_id("item"),
            "type": "function_call",
            "status": "in_progress",
            "name": tool["name"],
            "call_id": new_id("call"),
            "arguments": "",
        }
        previous = await self._output_item_added(run, item)
        ids = {"response_id": run.id, "item_id": item["id"], "output_index": 0, "call_id": item["call_id"]}
        middle = len(arguments) // 2
        for delta in (arguments[:middle], arguments[middle:]):
            if delta:
                await self.emit("response.function_call_arguments.delta", **ids, delta=delta)
        await self.emit(
            "response.function_call_arguments.done", **ids, name=tool["name"], arguments=arguments
        )
        item.update(status="completed", arguments=arguments)
        await self._output_item_done(run, item, previous)
        return item, (text_tokens(tool["name"] + arguments), 0)

    async def _message(
        self, run: ResponseRun, created: dict[str, Any]
    ) -> tuple[dict[str, Any], tuple[int, int], float]:
        with_audio = created["output_modalities"] == ["audio"]
        out_format = audio.audio_format(created["audio"]["output"]["format"])
        voice = created["audio"]["output"]["voice"]
        speed = float(self.config["audio"]["output"].get("speed", 1.0))
        words = _reply(run.context).split(" ")
        ms_per_word = 1000 / self.state.config.words_per_second / speed
        limit = created["max_output_tokens"]
        truncated = False
        if limit != "inf":
            while words and self._output_cost(words, ms_per_word, with_audio) > limit:
                words.pop()
                truncated = True
        item: dict[str, Any] = {
            "id": new_id("item"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        previous = await self._output_item_added(run, item)
        ids = {"response_id": run.id, "item_id": item["id"], "output_index": 0, "content_index": 0}
        said: list[str] = []
        sent_audio = bytearray()
        if with_audio:
            await self.emit("response.content_part.added", **ids, part={"type": "audio", "transcript": ""})
            chunks = audio.tone_chunks(voice, out_format, int(len(words) * ms_per_word)) if words else []
            per_chunk = len(words) / len(chunks) if chunks else 0.0
            for index, chunk in enumerate(chunks):
                if run.cancel_reason is not None:
                    break
                while len(said) < min(len(words), math.ceil((index + 1) * per_chunk)):
                    word = words[len(said)]
                    await self.emit(
                        "response.output_audio_transcript.delta",
                        **ids,
                        delta=word if not said else " " + word,
                    )
                    said.append(word)
                await self.emit("response.output_audio.delta", **ids, delta=_chunk_b64(chunk))
                sent_audio += chunk
                self.assistant_audio_produced = True
                await self._pace(out_format.duration_ms(len(chunk)))
            transcript = " ".join(said)
            await self.emit("response.output_audio.done", **ids)
            await self.emit("response.output_audio_transcript.done", **ids, transcript=transcript)
            await self.emit(
                "response.content_part.done", **ids, part={"type": "audio", "transcript": transcript}
            )
            item["content"] = [{"type": "output_audio", "transcript": transcript}]
            self.item_audio[item["id"]] = bytes(sent_audio)
        else:
            await self.emit("response.content_part.added", **ids, part={"type": "text", "text": ""})
            for word in words:
                if run.cancel_reason is not None:
                    break
                await self.emit("response.output_text.delta", **ids, delta=word if not said else " " + word)
                said.append(word)
                await self._pace(0)
            text = " ".join(said)
            await self.emit("response.output_text.done", **ids, text=text)
            await self.emit("response.content_part.done", **ids, part={"type": "text", "text": text})
            item["content"] = [{"type": "output_text", "text": text}]
        finished = run.cancel_reason is None and not truncated
        item["status"] = "completed" if finished else "incomplete"
        await self._output_item_done(run, item, previous)
        audio_ms = out_format.duration_ms(len(sent_audio))
        spoken = " ".join(said)
        return item, (text_tokens(spoken), math.ceil(audio_ms / MS_PER_ASSISTANT_AUDIO_TOKEN)), audio_ms

    @staticmethod
    def _output_cost(words: list[str], ms_per_word: float, with_audio: bool) -> int:
        cost = text_tokens(" ".join(words))
        if with_audio:
            cost += math.ceil(len(words) * ms_per_word / MS_PER_ASSISTANT_AUDIO_TOKEN)
        return cost

    async def _pace(self, audio_ms: float) -> None:
        factor = self.state.config.realtime_factor
        if factor:
            await asyncio.sleep(audio_ms / 1000 / factor)
        else:
            await asyncio.sleep(0)  # let client events (cancel, barge-in) in between deltas

    def _usage(self, run: ResponseRun, output: tuple[int, int]) -> dict[str, Any]:
        instructions = run.params.get("instructions", self.config.get("instructions", ""))
        text_in = text_tokens(instructions) + SPECIAL_TOKENS_PER_MESSAGE
        audio_in = image_in = 0
        for item in run.context:
            text_in += SPECIAL_TOKENS_PER_MESSAGE
            if item.get("type") == "function_call":
                text_in += text_tokens(str(item.get("name", "")) + str(item.get("arguments", "")))
            elif item.get("type") == "function_call_output":
                text_in += text_tokens(str(item.get("output", "")))
            for part in item.get("content", []):
                kind = part.get("type")
                if kind in ("input_text", "output_text"):
                    text_in += text_tokens(part.get("text"))
                elif kind == "input_image":
                    image_in += IMAGE_TOKENS
                elif kind in ("input_audio", "output_audio"):
                    # conversation items keep their audio aside; out-of-band input carries it inline
                    data = self.item_audio.get(item["id"]) or _decoded(part.get("audio"))
                    if kind == "input_audio":
                        ms = self.input_format.duration_ms(len(data))
                        audio_in += math.ceil(ms / MS_PER_USER_AUDIO_TOKEN)
                    else:
                        ms = audio.audio_format(self.config["audio"]["output"]["format"]).duration_ms(
                            len(data)
                        )
                        audio_in += math.ceil(ms / MS_PER_ASSISTANT_AUDIO_TOKEN)
        cached_text = cached_audio = 0
        if run.in_band:
            # the previous turn's input is this turn's prefix; upstream caches it in 64-token blocks
            previous_text, previous_audio = self._last_input_tokens
            cached_text = min(text_in, previous_text // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS)
            cached_audio = min(audio_in, previous_audio // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS)
            self._last_input_tokens = (text_in, audio_in)
        text_out, audio_out = output
        input_tokens = text_in + audio_in + image_in
        output_tokens = text_out + audio_out
        return {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": image_in,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {
                    "text_tokens": cached_text,
                    "audio_tokens": cached_audio,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }


_b64_cache: dict[bytes, str] = {}


def _chunk_b64(chunk: bytes) -> str:
    """Base64 of an audio chunk; the steady middle chunks of a tone repeat, so cache them."""
    cached = _b64_cache.get(chunk)
    if cached is None:
        cached = _b64(chunk)
        if len(_b64_cache) < 512:
            _b64_cache[chunk] = cached
    return cached


def _decoded(encoded: Any) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        return b""


def _texts(item: dict[str, Any]) -> list[str]:
    texts = [str(part.get("text") or part.get("transcript") or "") for part in item.get("content", [])]
    if item.get("type") == "function_call_output":
        texts.append(str(item.get("output", "")))
    return [t for t in texts if t]


def _reply(context: list[dict[str, Any]]) -> str:
    """What the emulated assistant says: deterministic, and about the last thing it was given."""
    for item in reversed(context):
        if item.get("type") == "function_call_output":
            return f"The function returned {str(item.get('output', ''))[:120]}."
        if item.get("type") != "message" or item.get("role") != "user":
            continue
        for part in item.get("content", []):
            if part.get("type") == "input_text" and part.get("text"):
                return f"You said: {' '.join(str(part['text']).split()[:40])}"
            if part.get("type") == "input_audio":
                return "I heard you. This is the emulator answering with a short spoken reply."
            if part.get("type") == "input_image":
                return "I see the image. This is the emulator describing it briefly."
    return "Hello! This is the emulator. How can I help you today?"


def _placeholder_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """Arguments satisfying a function's JSON Schema `required` list, with neutral values."""
    placeholders: dict[str, Any] = {
        "string": "emulated",
        "number": 0,
        "integer": 0,
        "boolean": False,
        "array": [],
        "object": {},
    }
    properties = parameters.get("properties") or {}
    result: dict[str, Any] = {}
    for name in parameters.get("required") or []:
        spec = properties.get(name) or {}
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            result[name] = spec["enum"][0]
        else:
            result[name] = placeholders.get(str(spec.get("type")))
    return result


async def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
