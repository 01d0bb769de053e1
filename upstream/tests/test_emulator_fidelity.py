"""The emulator against the schema of record: the official SDK's models (strict), upstream's
captured payloads (same keys), and the unmodified official SDK as a client."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from upstream.tests.support import CAPTURES, b64, realtime, silence, speech, strict_event

TOOL = {
    "type": "function",
    "name": "display_color_palette",
    "description": "\nCall this function when a user asks for a color palette.\n",
    "parameters": {
        "type": "object",
        "strict": True,
        "properties": {
            "theme": {"type": "string", "description": "Description of the theme for the color scheme."},
            "colors": {
                "type": "array",
                "description": "Array of five hex color codes based on the theme.",
                "items": {"type": "string", "description": "Hex color code"},
            },
        },
        "required": ["theme", "colors"],
    },
}


async def exercise_everything(emulator) -> list[dict]:
    """One session that makes the emulator send every kind of event it knows."""
    emulator.config.timer_scale = 0.01
    events: list[dict] = []
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "tools": [TOOL],
                "tool_choice": "auto",
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-4o-transcribe"},
                        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000},
                    }
                },
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(600) + silence(300))  # spoken turn, transcription, audio response
        await ws.until("rate_limits.updated")
        await ws.until("rate_limits.updated")  # the idle timeout fires and prompts the user
        await ws.send(
            "session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await ws.until("session.updated")
        await ws.send(
            "conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        )
        text_item = (await ws.until("conversation.item.done"))[-1]["item"]
        await ws.send("response.create", response={"output_modalities": ["text"]})
        await ws.until("rate_limits.updated")
        await ws.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "show me a display_color_palette"}],
            },
        )
        await ws.until("conversation.item.done")
        await ws.send("response.create")  # the user named the tool: a function call
        await ws.until("rate_limits.updated")
        await ws.append(speech(300))
        await ws.send("input_audio_buffer.commit")
        await ws.until("conversation.item.input_audio_transcription.completed")
        await ws.append(speech(100))
        await ws.send("input_audio_buffer.clear")
        await ws.until("input_audio_buffer.cleared")
        await ws.send("conversation.item.retrieve", item_id=text_item["id"])
        await ws.until("conversation.item.retrieved")
        await ws.send("response.create", response={"tool_choice": "none"})
        reply = (await ws.until("response.done"))[-1]["response"]["output"][0]
        await ws.until("rate_limits.updated")
        await ws.send("conversation.item.truncate", item_id=reply["id"], content_index=0, audio_end_ms=100)
        await ws.until("conversation.item.truncated")
        await ws.send("conversation.item.delete", item_id=text_item["id"])
        await ws.until("conversation.item.deleted")
        await ws.send("response.cancel", event_id="evt_nothing")
        await ws.until("error")
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": None, "turn_detection": {"type": "server_vad"}}},
            },
        )
        await ws.until("session.updated")
        events = ws.events
    return events


async def test_every_event_the_emulator_sends_validates_strictly_against_the_sdk(emulator):
    events = await exercise_everything(emulator)
    sent = {event["type"] for event in events}
    expected = {
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.done",
        "rate_limits.updated",
        "error",
    }
    assert expected <= sent
    for event in events:  # RawSocket validated each already; this states it where it is proven
        strict_event(event)


def key_paths(value, prefix=""):
    """Every key path in a JSON value; list elements share the path `[]`."""
    paths = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            paths |= key_paths(item, f"{prefix}[]")
    return paths


# Captures that are real GA payloads (not beta-era examples reused by the docs), compared deeply.
DEEP = [
    "session.created",
    "session.updated",
    "response.created",
    "response.done",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.delta",
    "input_audio_buffer.timeout_triggered",
    "rate_limits.updated",
    "error",
]


async def test_events_carry_the_same_keys_as_upstreams_captured_payloads(emulator):
    events = await exercise_everything(emulator)
    by_type: dict[str, list[set[str]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(key_paths(event))
    compared = 0
    for event_type, capture in CAPTURES.items():
        if event_type not in by_type:
            continue
        compared += 1
        if event_type in DEEP:
            wanted = key_paths(capture)
            assert wanted in by_type[event_type], (
                f"no {event_type} with the captured keys; differences: "
                f"{sorted(wanted ^ min(by_type[event_type], key=lambda p: len(p ^ wanted)))}"
            )
        else:
            assert set(capture) in [
                {p for p in paths if "." not in p and "[" not in p} for paths in by_type[event_type]
            ]
    assert compared >= 25


def test_client_secret_response_has_the_captured_keys(emulator):
    capture = CAPTURES["POST /v1/realtime/client_secrets"]
    ours = httpx.post(
        f"{emulator.base_url}/realtime/client_secrets",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are a friendly assistant.",
            }
        },
    ).json()
    # the capture's turn_detection was cut down to its type when it was published; compare the
    # rest deeply and turn_detection against the session.created capture
    trimmed = "session.audio.input.turn_detection."
    assert {p for p in key_paths(capture) if not p.startswith(trimmed)} == {
        p for p in key_paths(ours) if not p.startswith(trimmed)
    }
    assert set(ours["session"]["audio"]["input"]["turn_detection"]) == set(
        CAPTURES["session.created"]["session"]["audio"]["input"]["turn_detection"]
    )


def test_the_official_sdk_creates_client_secrets(emulator):
    client = OpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    secret = client.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 300},
        session={"type": "realtime", "model": "gpt-realtime", "audio": {"output": {"voice": "marin"}}},
    )
    assert secret.value.startswith("ek_")
    assert secret.session.type == "realtime"
    assert secret.session.audio.output.voice == "marin"
    assert emulator.requests[-1].headers["user-agent"].startswith("OpenAI/Python")


def test_the_official_sdk_sees_upstream_errors_as_its_usual_exceptions(emulator):
    client = OpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-4"})
    assert bad.value.param == "session.model"
    assert bad.value.code == "invalid_value"
    with pytest.raises(openai.AuthenticationError):
        OpenAI(
            base_url=emulator.base_url, api_key="sk-nope-nope-nope", max_retries=0
        ).realtime.client_secrets.create()
    emulator.faults.next_http(429, retry_after=0)
    with pytest.raises(openai.RateLimitError):
        client.realtime.client_secrets.create()
    emulator.faults.next_http(503)
    with pytest.raises(openai.InternalServerError):
        client.realtime.client_secrets.create()


def test_the_official_sdk_retries_a_429_honouring_retry_after(emulator):
    emulator.faults.next_http(429, retry_after_ms=50)
    client = OpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=1)
    assert client.realtime.client_secrets.create().value.startswith("ek_")
    assert [r.status for r in emulator.requests] == [429, 200]


def test_the_official_sync_sdk_completes_a_spoken_turn(emulator):
    client = OpenAI(base_url=emulator.base_url, api_key=emulator.api_key)
    with client.realtime.connect(model="gpt-realtime") as connection:
        connection.session.update(session={"type": "realtime", "audio": {"output": {"voice": "cedar"}}})
        spoken = speech(1000) + silence(300)
        for start in range(0, len(spoken), 960):  # 20 ms chunks, as OpenAI's examples send them
            connection.input_audio_buffer.append(audio=b64(spoken[start : start + 960]))
        received = []
        audio = bytearray()
        for event in connection:
            received.append(event.type)
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            if event.type == "response.done":
                done = event
                break
    assert received[:2] == ["session.created", "session.updated"]
    assert "input_audio_buffer.committed" in received
    assert done.response.status == "completed"
    assert done.response.audio.output.voice == "cedar"
    assert done.response.usage.output_token_details.audio_tokens == -(-len(audio) // (48 * 50))
    assert len(audio) > 48 * 1000


async def test_the_official_async_sdk_talks_with_an_ephemeral_key(emulator):
    server = AsyncOpenAI(base_url=emulator.base_url, api_key=emulator.api_key)
    secret = await server.realtime.client_secrets.create(
        session={
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["text"],
            "instructions": "Be terse.",
        }
    )
    browser = AsyncOpenAI(base_url=emulator.base_url, api_key=secret.value)
    async with browser.realtime.connect(model="gpt-realtime") as connection:
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ping"}]}
        )
        await connection.response.create()
        text = ""
        async for event in connection:
            if event.type == "session.created":
                assert event.session.instructions == "Be terse."
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                break
    assert text == "You said: ping"


async def test_the_official_sdk_reports_error_events_without_dropping_the_session(emulator):
    client = AsyncOpenAI(base_url=emulator.base_url, api_key=emulator.api_key)
    async with client.realtime.connect(model="gpt-realtime") as connection:
        await connection.send({"type": "response.cancel", "event_id": "evt_sdk"})
        await connection.input_audio_buffer.clear()
        seen = []
        async for event in connection:
            seen.append(event)
            if event.type == "input_audio_buffer.cleared":
                break
    error = next(e for e in seen if e.type == "error")
    assert error.error.event_id == "evt_sdk"
    assert error.error.code == "response_cancel_not_active"


def test_captures_file_is_what_the_tests_think_it_is():
    assert CAPTURES["response.done"]["response"]["usage"]["total_tokens"] == 253
    assert json.dumps(CAPTURES["session.created"]).count("marin") == 1
