"""The emulated realtime socket behaves as upstream does. Every event received in these tests is
validated strictly against the official SDK's models (see support.RawSocket)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from upstream.emulator import audio
from upstream.tests.support import (
    FORMAT_OBJECTS,
    b64,
    pcm16_samples,
    realtime,
    silence,
    speech,
)

SPOKEN_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
RESPONSE_TAIL = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
]


def types(events):
    return [event["type"] for event in events]


def without_deltas(events):
    return [t for t in types(events) if not t.endswith(".delta")]


async def test_session_created_comes_first_with_the_full_config(emulator):
    async with realtime(emulator) as ws:
        created = await ws.next()
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["object"] == "realtime.session"
    assert session["id"].startswith("sess_")
    assert len(session["id"]) == 26
    assert session["model"] == "gpt-realtime-2025-08-28"  # the alias resolves to its snapshot
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["expires_at"] > 0
    assert created["event_id"].startswith("event_")
    assert len(created["event_id"]) == 27


async def test_a_spoken_turn_runs_vad_commit_and_a_spoken_response(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.append(silence(400) + speech(800) + silence(600))
        events = await ws.until("response.done")
        limits = await ws.next()

    assert without_deltas(events) == SPOKEN_TURN + RESPONSE_TAIL
    assert limits["type"] == "rate_limits.updated"
    started, stopped, committed = events[0], events[1], events[2]
    # speech began at 400 ms; the reported start includes the 300 ms prefix padding
    assert started["audio_start_ms"] == 100
    # 200 ms of silence after speech ends at 1200 ms
    assert stopped["audio_end_ms"] == 1400
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    assert committed["previous_item_id"] is None
    user_item = events[3]["item"]
    assert user_item == {
        "id": committed["item_id"],
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
    done = events[-1]["response"]
    assert deltas
    assert transcript
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": transcript}]
    transcript_done = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript_done["transcript"] == transcript


async def test_response_audio_is_real_pcm16_and_usage_follows_its_duration(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.append(speech(1000) + silence(300))
        events = await ws.until("response.done")
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    samples = pcm16_samples(pcm)
    assert len(pcm) % 2 == 0
    peak = max(abs(s) for s in samples)
    assert 9000 < peak <= int(32767 * 0.3) + 1  # a tone at 30% of full scale, not silence or noise
    duration_ms = len(pcm) / 48
    usage = events[-1]["response"]["usage"]
    assert usage["output_token_details"]["audio_tokens"] == -(-duration_ms // 50)  # 1 token per 50 ms
    # the user spoke 1000 ms (+ 300 ms padding, none here, + 200 ms of the trailing silence)
    assert usage["input_token_details"]["audio_tokens"] == 12  # 1200 ms at 1 token per 100 ms


async def test_usage_obeys_upstreams_invariants_and_grows_turn_by_turn(emulator):
    totals = []
    async with realtime(emulator) as ws:
        await ws.next()
        for _ in range(3):
            await ws.append(speech(700) + silence(300))
            events = await ws.until("response.done")
            usage = events[-1]["response"]["usage"]
            details, out = usage["input_token_details"], usage["output_token_details"]
            cached = details["cached_tokens_details"]
            assert (
                usage["input_tokens"]
                == details["text_tokens"] + details["audio_tokens"] + details["image_tokens"]
            )
            assert (
                details["cached_tokens"]
                == cached["text_tokens"] + cached["audio_tokens"] + cached["image_tokens"]
            )
            assert details["cached_tokens"] <= usage["input_tokens"]
            assert cached["text_tokens"] <= details["text_tokens"]
            assert cached["audio_tokens"] <= details["audio_tokens"]
            assert usage["output_tokens"] == out["text_tokens"] + out["audio_tokens"]
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            totals.append((usage["input_tokens"], details["cached_tokens"]))
            await ws.until("rate_limits.updated")
    inputs = [total for total, _ in totals]
    assert inputs[0] < inputs[1] < inputs[2]  # the whole conversation is input again each turn
    assert totals[0][1] == 0
    assert totals[2][1] > 0  # later turns reuse a cached prefix


async def test_quiet_audio_below_the_threshold_never_starts_speech(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.append(speech(1000, amplitude=0.01))
        assert await ws.quiet(0.3) == []
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.1}}},
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(300, amplitude=0.01) + silence(300))  # now loud enough for threshold 0.1
        assert types(await ws.until("input_audio_buffer.committed"))[-3:] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ]


@pytest.mark.parametrize("fmt", ["pcmu", "pcma"])
async def test_g711_input_and_output_use_8khz_byte_arithmetic(emulator, fmt):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {
                    "input": {"format": FORMAT_OBJECTS[fmt]},
                    "output": {"format": FORMAT_OBJECTS[fmt]},
                },
            },
        )
        updated = await ws.until("session.updated")
        assert updated[-1]["session"]["audio"]["output"]["format"] == {"type": f"audio/{fmt}"}
        await ws.append(silence(200, fmt) + speech(600, fmt) + silence(400, fmt), fmt=fmt)
        events = await ws.until("response.done")
    started, stopped = events[0], events[1]
    assert started["audio_start_ms"] == 0  # 200 ms in, minus 300 ms of padding, floored at 0
    assert stopped["audio_end_ms"] == 1000
    g711 = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert events[-1]["response"]["audio"]["output"]["format"] == {"type": f"audio/{fmt}"}
    # one byte per sample at 8 kHz: 8 bytes per millisecond
    assert events[-1]["response"]["usage"]["output_token_details"]["audio_tokens"] == -(-len(g711) // 400)
    decoded = audio.to_linear(g711, audio.PCMU if fmt == "pcmu" else audio.PCMA)
    assert max(abs(s) for s in decoded) > 8000


async def test_text_only_responses_stream_output_text(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "conversation.item.create",
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello there"}],
            },
        )
        await ws.until("conversation.item.done")
        await ws.send("response.create", response={"output_modalities": ["text"]})
        events = await ws.until("response.done")
    assert without_deltas(events) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "You said: hello there"
    assert events[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert events[-1]["response"]["usage"]["output_token_details"] == {"text_tokens": 6, "audio_tokens": 0}


async def test_manual_turns_commit_and_respond_on_request(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await ws.until("session.updated")
        await ws.append(speech(500))
        assert await ws.quiet(0.2) == []  # no VAD: nothing happens by itself
        await ws.send("input_audio_buffer.commit")
        committed = await ws.until("conversation.item.done")
        assert types(committed) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        await ws.send("response.create")
        assert (await ws.until("response.done"))[-1]["response"]["status"] == "completed"


async def test_committing_less_than_100ms_is_an_error_naming_the_event(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await ws.until("session.updated")
        await ws.append(speech(40))
        await ws.send("input_audio_buffer.commit", event_id="evt_commit_1")
        error = await ws.next()
    assert error["type"] == "error"
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    assert error["error"]["event_id"] == "evt_commit_1"
    assert "buffer only has 40.00ms of audio" in error["error"]["message"]


async def test_clear_empties_the_buffer(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update", session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        )
        await ws.until("session.updated")
        await ws.append(speech(500))
        await ws.send("input_audio_buffer.clear")
        assert types([await ws.next()]) == ["input_audio_buffer.cleared"]
        await ws.send("input_audio_buffer.commit")
        assert (await ws.next())["error"]["code"] == "input_audio_buffer_commit_empty"


async def test_input_transcription_reports_deltas_and_completed_with_usage(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
                "include": ["item.input_audio_transcription.logprobs"],
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(1000) + silence(300))
        events = await ws.until("conversation.item.input_audio_transcription.completed")
    deltas = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    completed = events[-1]
    assert "".join(d["delta"] for d in deltas) == completed["transcript"]
    assert all(d["logprobs"] for d in deltas)
    assert completed["usage"]["type"] == "tokens"
    assert completed["usage"]["input_token_details"]["audio_tokens"] == 12


async def test_whisper_transcription_is_billed_by_duration(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-1"}}}},
        )
        await ws.until("session.updated")
        await ws.append(speech(1000) + silence(300))
        completed = (await ws.until("conversation.item.input_audio_transcription.completed"))[-1]
    assert completed["usage"] == {"type": "duration", "seconds": 1.2}


async def test_speech_during_a_response_cancels_it(emulator):
    emulator.config.realtime_factor = 20.0  # slow the response down enough to talk over it
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.append(speech(600) + silence(300))
        await ws.until("response.output_audio.delta")
        await ws.append(speech(300))
        events = await ws.until("response.done")
    assert "input_audio_buffer.speech_started" in types(events)
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"


async def test_response_cancel_and_cancelling_nothing(emulator):
    emulator.config.realtime_factor = 20.0
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me"}]},
        )
        await ws.until("conversation.item.done")
        await ws.send("response.create")
        await ws.until("response.output_audio.delta")
        await ws.send("response.create", event_id="evt_second")
        busy = await ws.until("error")
        assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
        assert busy[-1]["error"]["event_id"] == "evt_second"
        await ws.send("response.cancel")
        done = (await ws.until("response.done"))[-1]["response"]
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        await ws.until("rate_limits.updated")
        await ws.send("response.cancel", event_id="evt_cancel")
        error = await ws.next()
    assert error["error"]["code"] == "response_cancel_not_active"
    assert error["error"]["message"] == "Cancellation failed: no active response found"
    assert error["error"]["event_id"] == "evt_cancel"


async def test_out_of_band_responses_stay_out_of_the_conversation(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "response.create",
            response={
                "conversation": "none",
                "output_modalities": ["text"],
                "metadata": {"purpose": "summary"},
                "input": [
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "sum up"}]}
                ],
            },
        )
        events = await ws.until("response.done")
    assert "conversation.item.added" not in types(events)
    done = events[-1]["response"]
    assert done["conversation_id"] is None
    assert done["metadata"] == {"purpose": "summary"}
    assert done["output"][0]["content"][0]["text"] == "You said: sum up"


async def test_function_calls_when_a_tool_is_required_then_answers_the_output(emulator):
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update", session={"type": "realtime", "tools": [tool], "tool_choice": "required"}
        )
        await ws.until("session.updated")
        await ws.send("response.create")
        events = await ws.until("response.done")
        done = events[-1]["response"]
        call = done["output"][0]
        assert (call["type"], call["name"]) == ("function_call", "get_weather")
        assert json.loads(call["arguments"]) == {"city": "emulated"}
        arguments_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert arguments_done["call_id"] == call["call_id"]
        await ws.send(
            "conversation.item.create",
            item={"type": "function_call_output", "call_id": call["call_id"], "output": '{"temp": 21}'},
        )
        await ws.until("conversation.item.done")
        await ws.send("response.create")
        answer = (await ws.until("response.done"))[-1]["response"]["output"][0]
    assert answer["type"] == "message"
    assert answer["content"][0]["transcript"] == 'The function returned {"temp": 21}.'


async def test_conversation_items_can_be_created_retrieved_truncated_and_deleted(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        first = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": b64(speech(200))}],
        }
        await ws.send("conversation.item.create", item=first)
        added = (await ws.until("conversation.item.added"))[-1]
        assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]  # audio left out
        await ws.until("conversation.item.done")
        await ws.send(
            "conversation.item.create",
            previous_item_id="root",
            item={
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "be brief"}],
            },
        )
        system = (await ws.until("conversation.item.done"))[-1]
        assert system["previous_item_id"] is None  # inserted at the start
        await ws.send("conversation.item.retrieve", item_id=added["item"]["id"])
        retrieved = await ws.next()
        assert base64.b64decode(retrieved["item"]["content"][0]["audio"]) == speech(200)
        await ws.send("response.create")
        reply = (await ws.until("response.done"))[-1]["response"]["output"][0]
        await ws.send("conversation.item.truncate", item_id=reply["id"], content_index=0, audio_end_ms=500)
        truncated = await ws.until("conversation.item.truncated")
        assert truncated[-1]["audio_end_ms"] == 500
        await ws.send("conversation.item.retrieve", item_id=reply["id"])
        retrieved = await ws.until("conversation.item.retrieved")
        assert len(base64.b64decode(retrieved[-1]["item"]["content"][0]["audio"])) == 500 * 48
        await ws.send(
            "conversation.item.truncate", item_id=reply["id"], content_index=0, audio_end_ms=600_000
        )
        assert (await ws.until("error"))[-1]["error"]["param"] == "audio_end_ms"
        await ws.send("conversation.item.delete", item_id=reply["id"])
        assert (await ws.until("conversation.item.deleted"))[-1]["item_id"] == reply["id"]
        await ws.send("conversation.item.retrieve", item_id=reply["id"], event_id="evt_gone")
        gone = (await ws.until("error"))[-1]["error"]
    assert gone["event_id"] == "evt_gone"
    assert gone["message"] == f"Item with item_id not found: {reply['id']}"


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("not json", "invalid_json", None),
        ('{"event_id": "evt_1"}', "invalid_event", None),
        ('{"type": "session.upgrade", "event_id": "evt_1"}', "invalid_value", "type"),
        (
            '{"type": "input_audio_buffer.append", "event_id": "evt_1", "audio": "%%%"}',
            "invalid_value",
            "audio",
        ),
        ('{"type": "input_audio_buffer.append", "event_id": "evt_1"}', "missing_required_parameter", "audio"),
        (
            '{"type": "input_audio_buffer.append", "event_id": "evt_1", "audio": "AAAA"}',
            "invalid_value",
            "audio",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", "session": {}}',
            "missing_required_parameter",
            "session.type",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", '
            '"session": {"type": "realtime", "modalities": ["audio"]}}',
            "unknown_parameter",
            "session.modalities",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", "audio": '
            '{"output": {"voice": "nova"}}}}',
            "invalid_value",
            "session.audio.output.voice",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", "session": {"type": "realtime", "audio": '
            '{"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}',
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", '
            '"session": {"type": "realtime", "max_output_tokens": 0}}',
            "integer_below_min_value",
            "session.max_output_tokens",
        ),
        (
            '{"type": "session.update", "event_id": "evt_1", "session": {"type": "transcription"}}',
            "invalid_value",
            "session.type",
        ),
        ('{"type": "response.cancel", "event_id": "evt_1", "response_id": 7}', "invalid_type", "response_id"),
        ('{"type": "output_audio_buffer.clear", "event_id": "evt_1"}', "invalid_value", "type"),
    ],
)
async def test_bad_client_events_get_error_events_and_the_session_goes_on(emulator, frame, code, param):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send_raw(frame)
        error = await ws.next()
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == code
        assert error["error"]["param"] == param
        assert error["error"]["event_id"] == ("evt_1" if "evt_1" in frame else None)
        await ws.send("input_audio_buffer.clear")
        assert (await ws.next())["type"] == "input_audio_buffer.cleared"  # still alive


async def test_a_wav_file_is_refused_as_the_wrong_audio_format(emulator):
    wav = b"RIFF" + b"\x24\x00\x00\x00" + b"WAVEfmt " + bytes(32)
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send("input_audio_buffer.append", audio=b64(wav), event_id="evt_wav")
        error = (await ws.next())["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_value", "audio", "evt_wav")
    assert "WAV" in error["message"]


async def test_binary_frames_are_not_part_of_the_protocol(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send_raw(speech(20))
        assert (await ws.next())["error"]["code"] == "invalid_event"


async def test_rejected_session_update_changes_nothing(emulator):
    async with realtime(emulator) as ws:
        created = (await ws.next())["session"]
        await ws.send(
            "session.update",
            session={"type": "realtime", "instructions": "new", "audio": {"output": {"speed": 9}}},
        )
        error = (await ws.next())["error"]
        assert error["param"] == "session.audio.output.speed"
        await ws.send("session.update", session={"type": "realtime"})
        updated = (await ws.next())["session"]
    assert updated["instructions"] == created["instructions"]
    assert updated["audio"] == created["audio"]


async def test_session_update_changes_only_the_fields_sent(emulator):
    async with realtime(emulator) as ws:
        created = (await ws.next())["session"]
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "output": {"voice": "cedar"},
                    "input": {"turn_detection": {"type": "semantic_vad"}},
                },
            },
        )
        updated = (await ws.next())["session"]
    assert updated["instructions"] == "Be brief."
    assert updated["audio"]["output"] == {**created["audio"]["output"], "voice": "cedar"}
    assert updated["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }
    assert updated["audio"]["input"]["format"] == created["audio"]["input"]["format"]
    assert updated["id"] == created["id"]


async def test_voice_and_model_cannot_change_once_fixed(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send("session.update", session={"type": "realtime", "model": "gpt-realtime"})
        assert (await ws.next())["type"] == "session.updated"  # the same model again is harmless
        await ws.send("session.update", session={"type": "realtime", "model": "gpt-4o-realtime-preview"})
        assert (await ws.next())["error"]["param"] == "session.model"
        await ws.send("response.create")
        await ws.until("response.done")
        await ws.until("rate_limits.updated")
        await ws.send("session.update", session={"type": "realtime", "audio": {"output": {"voice": "ash"}}})
        error = (await ws.next())["error"]
    assert error["code"] == "cannot_update_voice"
    assert error["message"] == "Cannot update a conversation's voice if assistant audio is present."


async def test_the_session_ends_at_its_maximum_duration(emulator):
    emulator.config.max_session_seconds = 0.3
    async with realtime(emulator) as ws:
        await ws.next()
        error = await ws.next(timeout=3)
        with pytest.raises(Exception):  # noqa: B017  (the server closed: ConnectionClosed)
            await ws.next(timeout=3)
        close_code = ws.ws.close_code
    assert error["error"]["code"] == "session_expired"
    assert error["error"]["message"] == "Your session hit the maximum duration of 0.3 seconds."
    assert close_code == 1000


async def test_idle_timeout_prompts_the_user_after_silence(emulator):
    emulator.config.timer_scale = 0.01  # idle_timeout_ms 5000 → 50 ms, plus the reply's audio
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}},
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(500) + silence(300))
        await ws.until("rate_limits.updated")
        events = await ws.until("response.done", timeout=10)
    triggered = events[0]
    assert triggered["type"] == "input_audio_buffer.timeout_triggered"
    assert triggered["audio_end_ms"] - triggered["audio_start_ms"] == 5000
    assert types(events)[1:4] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]


async def test_transcription_sessions_transcribe_and_never_respond(emulator):
    async with realtime(emulator, query="intent=transcription") as ws:
        created = (await ws.next())["session"]
        assert created["type"] == "transcription"
        assert created["object"] == "realtime.transcription_session"
        await ws.send(
            "session.update",
            session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(500) + silence(300))
        await ws.until("conversation.item.input_audio_transcription.completed")
        assert await ws.quiet(0.2) == []
        await ws.send("response.create", event_id="evt_r")
        assert (await ws.next())["error"]["event_id"] == "evt_r"


async def test_ephemeral_keys_open_sessions_with_the_secrets_config(emulator):
    minted = httpx.post(
        f"{emulator.base_url}/realtime/client_secrets",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are a pirate.",
                "audio": {"output": {"voice": "verse"}},
            }
        },
    ).json()
    for _ in range(2):  # one secret, several sessions
        async with realtime(emulator, key=minted["value"]) as ws:
            session = (await ws.next())["session"]
        assert session["instructions"] == "You are a pirate."
        assert session["audio"]["output"]["voice"] == "verse"
        assert session["model"] == "gpt-realtime-2025-08-28"
    assert emulator.state.secret(minted["value"]).sessions_opened == 2
    assert [c.auth for c in emulator.connections] == ["ephemeral", "ephemeral"]


async def test_browser_subprotocol_carries_the_key(emulator):
    async with realtime(
        emulator, key="", subprotocols=["realtime", f"openai-insecure-api-key.{emulator.api_key}"]
    ) as ws:
        assert (await ws.next())["type"] == "session.created"
        assert ws.ws.subprotocol == "realtime"


@pytest.mark.parametrize(
    ("key", "headers", "query", "code", "close_code"),
    [
        ("sk-wrong-key-0123456789", {}, "model=gpt-realtime", "invalid_api_key", 4001),
        ("", {}, "model=gpt-realtime", "invalid_api_key", 4001),
        (None, {"OpenAI-Beta": "realtime=v1"}, "model=gpt-realtime", "beta_api_shape_disabled", 4000),
        (None, {}, "model=gpt-5-turbo", "model_not_found", 4004),
        (None, {}, "call_id=rtc_123", "call_not_found", 4004),
    ],
)
async def test_refused_connections_get_one_error_event_then_close(
    emulator, key, headers, query, code, close_code
):
    async with realtime(emulator, key=key, headers=headers, query=query) as ws:
        error = await ws.next()
        with pytest.raises(Exception):  # noqa: B017
            await ws.next()
        assert ws.ws.close_code == close_code
    assert error["type"] == "error"
    assert error["error"]["code"] == code
    assert "sk-wrong-key-0123456789" not in json.dumps(error)  # keys are masked in messages


async def test_an_expired_ephemeral_key_is_refused(emulator):
    secret = emulator.state.mint(session={"type": "realtime"}, ttl_seconds=-1)
    async with realtime(emulator, key=secret.value) as ws:
        error = (await ws.next())["error"]
    assert error["code"] == "invalid_api_key"
    assert "expired" in error["message"]


async def test_rate_limits_are_reported_after_each_response(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        remaining = []
        for _ in range(2):
            await ws.send("response.create", response={"output_modalities": ["text"]})
            events = await ws.until("rate_limits.updated")
            limits = {item["name"]: item for item in events[-1]["rate_limits"]}
            remaining.append((limits["requests"]["remaining"], limits["tokens"]["remaining"]))
            assert 0 < limits["tokens"]["reset_seconds"] <= 60
    assert remaining[1][0] == remaining[0][0] - 1
    assert remaining[1][1] < remaining[0][1]


async def test_max_output_tokens_cuts_the_response_short_as_incomplete(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send("response.create", response={"max_output_tokens": 40})
        done = (await ws.until("response.done"))[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert 0 < done["usage"]["output_tokens"] <= 40
    assert done["output"][0]["status"] == "incomplete"


async def test_semantic_vad_waits_longer_when_less_eager(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}},
            },
        )
        await ws.until("session.updated")
        await ws.append(speech(400) + silence(700))  # a pause a "high" eagerness would end the turn on
        assert types(await ws.quiet(0.2)) == ["input_audio_buffer.speech_started"]
        await ws.append(silence(400))
        stopped = (await ws.until("input_audio_buffer.speech_stopped"))[-1]
    assert stopped["audio_end_ms"] == 1400  # 1000 ms of silence after speech ended at 400 ms


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            {
                "type": "conversation.item.create",
                "previous_item_id": "item_nope",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]},
            },
            "item_not_found",
            "previous_item_id",
        ),
        (
            {"type": "conversation.item.create", "item": {"type": "message", "content": []}},
            "missing_required_parameter",
            "item.role",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": [{"type": "output_audio"}]},
            },
            "invalid_value",
            "item.content[0].type",
        ),
        (
            {
                "type": "response.create",
                "response": {"input": [{"type": "item_reference", "id": "item_nope"}]},
            },
            "item_not_found",
            "response.input",
        ),
        (
            {"type": "response.create", "response": {"metadata": {f"k{i}": "v" for i in range(17)}}},
            "object_above_max_properties",
            "response.metadata",
        ),
        (
            {"type": "response.create", "response": {"conversation": "conv_123"}},
            "invalid_value",
            "response.conversation",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "item_nope",
                "content_index": 0,
                "audio_end_ms": 1,
            },
            "item_not_found",
            "item_id",
        ),
    ],
)
async def test_bad_item_and_response_requests(emulator, event, code, param):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send_raw(json.dumps({**event, "event_id": "evt_bad"}))
        error = (await ws.next())["error"]
    assert (error["code"], error["param"], error["event_id"]) == (code, param, "evt_bad")


async def test_item_ids_chosen_by_the_client_must_be_unique(emulator):
    item = {
        "id": "item_mine",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "a"}],
    }
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send("conversation.item.create", item=item)
        added = (await ws.until("conversation.item.done"))[-1]
        await ws.send("conversation.item.create", item=item)
        error = (await ws.next())["error"]
    assert added["item"]["id"] == "item_mine"
    assert error["param"] == "item.id"


async def test_out_of_band_input_audio_is_counted_as_input(emulator):
    async with realtime(emulator) as ws:
        await ws.next()
        await ws.send(
            "response.create",
            response={
                "conversation": "none",
                "output_modalities": ["text"],
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_audio", "audio": b64(speech(1000))}],
                    }
                ],
            },
        )
        done = (await ws.until("response.done"))[-1]["response"]
    assert done["usage"]["input_token_details"]["audio_tokens"] == 10
