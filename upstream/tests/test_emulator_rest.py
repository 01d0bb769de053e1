"""POST /v1/realtime/client_secrets on the emulator: validation like upstream's, OpenAI-shaped
errors naming `param`, the session echoed with defaults, faults on demand."""

from __future__ import annotations

import time

import httpx
import pytest


def post(emulator, body, *, key=None, headers=None, raw=None):
    all_headers = {"Authorization": f"Bearer {key or emulator.api_key}"}
    all_headers.update(headers or {})
    if raw is not None:
        return httpx.post(f"{emulator.base_url}/realtime/client_secrets", headers=all_headers, content=raw)
    return httpx.post(f"{emulator.base_url}/realtime/client_secrets", headers=all_headers, json=body)


def test_mints_an_ephemeral_key_and_echoes_the_session_with_defaults(emulator):
    before = int(time.time())
    response = post(
        emulator,
        {
            "expires_after": {"anchor": "created_at", "seconds": 120},
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "instructions": "You are a friendly assistant.",
            },
        },
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["value"].startswith("ek_")
    assert len(body["value"]) == 35
    assert int(body["value"][3:], 16) >= 0  # 32 lowercase hex characters
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    session = body["session"]
    assert session["id"].startswith("sess_")
    assert {k: v for k, v in session.items() if k != "id"} == {
        "type": "realtime",
        "object": "realtime.session",
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "You are a friendly assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def test_default_ttl_is_ten_minutes_and_an_empty_body_means_a_default_session(emulator):
    body = post(emulator, {}).json()
    assert abs(body["expires_at"] - (time.time() + 600)) < 5
    assert body["session"]["model"] == "gpt-realtime"


def test_transcription_sessions_echo_their_own_shape(emulator):
    session = post(
        emulator,
        {"session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
    ).json()["session"]
    assert session["object"] == "realtime.transcription_session"
    assert set(session) == {"type", "object", "id", "expires_at", "audio", "include"}
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"sesion": {"type": "realtime"}}, "unknown_parameter", "sesion"),
        ({"session": {"type": "realtime", "voice": "alloy"}}, "unknown_parameter", "session.voice"),
        (
            {"session": {"type": "realtime", "modalities": ["audio"]}},
            "unknown_parameter",
            "session.modalities",
        ),
        ({"session": {"model": "gpt-realtime"}}, "missing_required_parameter", "session.type"),
        ({"session": {"type": "chat"}}, "invalid_value", "session.type"),
        ({"session": {"type": "realtime", "model": "gpt-4"}}, "invalid_value", "session.model"),
        ({"session": {"type": "realtime", "instructions": 42}}, "invalid_type", "session.instructions"),
        (
            {"expires_after": {"anchor": "created_at", "seconds": 5}},
            "integer_below_min_value",
            "expires_after.seconds",
        ),
        (
            {"expires_after": {"anchor": "created_at", "seconds": 7201}},
            "integer_above_max_value",
            "expires_after.seconds",
        ),
        (
            {"expires_after": {"anchor": "created_at", "seconds": "60"}},
            "invalid_type",
            "expires_after.seconds",
        ),
        ({"expires_after": {"anchor": "expires_at", "seconds": 60}}, "invalid_value", "expires_after.anchor"),
        ({"expires_after": {"seconds": 60}}, "missing_required_parameter", "expires_after.anchor"),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": "nova"}}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
        (
            {"session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/wav"}}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                }
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}},
                }
            },
            "unknown_parameter",
            "session.audio.input.format.rate",
        ),
        (
            {"session": {"type": "realtime", "audio": {"output": {"speed": 2}}}},
            "decimal_above_max_value",
            "session.audio.output.speed",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": True}}},
                }
            },
            "invalid_type",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}}},
                }
            },
            "integer_below_min_value",
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"session": {"type": "realtime", "max_output_tokens": 5000}},
            "integer_above_max_value",
            "session.max_output_tokens",
        ),
        (
            {"session": {"type": "realtime", "max_output_tokens": "max"}},
            "invalid_value",
            "session.max_output_tokens",
        ),
        (
            {"session": {"type": "realtime", "output_modalities": ["text", "audio"]}},
            "array_above_max_length",
            "session.output_modalities",
        ),
        (
            {"session": {"type": "realtime", "tools": [{"type": "function", "name": 3}]}},
            "invalid_type",
            "session.tools[0].name",
        ),
        (
            {"session": {"type": "realtime", "tool_choice": "sometimes"}},
            "invalid_value",
            "session.tool_choice",
        ),
        (
            {"session": {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper-9"}}}}},
            "invalid_value",
            "session.audio.input.transcription.model",
        ),
        (
            {"session": {"type": "transcription", "model": "gpt-realtime"}},
            "unknown_parameter",
            "session.model",
        ),
    ],
)
def test_bad_bodies_get_openai_shaped_400s_naming_the_param(emulator, body, code, param):
    response = post(emulator, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["code"], error["param"]) == (code, param)
    assert param in error["message"] or code == "invalid_value"
    assert emulator.secrets == []


def test_error_messages_read_like_upstreams(emulator):
    def message(body):
        return post(emulator, body).json()["error"]["message"]

    assert message({"session": {"type": "realtime", "voice": "x"}}) == "Unknown parameter: 'session.voice'."
    assert message({"session": {}}) == "Missing required parameter: 'session.type'."
    assert message({"session": {"type": "realtime", "instructions": 42}}) == (
        "Invalid type for 'session.instructions': expected a string, but got an integer instead."
    )
    assert message({"expires_after": {"anchor": "created_at", "seconds": 5}}) == (
        "Invalid 'expires_after.seconds': integer below minimum value. "
        "Expected a value >= 10, but got 5 instead."
    )
    assert message({"session": {"type": "realtime", "audio": {"output": {"voice": "nova"}}}}).startswith(
        "Invalid value: 'nova'. Supported values are: 'alloy', 'ash',"
    )


def test_a_body_that_is_not_json_is_a_400(emulator):
    response = post(emulator, None, raw=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("We could not parse the JSON body of your request.")
    assert post(emulator, None, raw=b"[1, 2]").status_code == 400


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("sk-not-the-right-key-123456", "invalid_api_key"),
        ("ek_0123456789abcdef0123456789abcdef", "invalid_api_key"),
    ],
)
def test_bad_keys_get_401(emulator, key, code):
    response = post(emulator, {}, key=key)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == code
    assert key not in error["message"]  # masked, as upstream masks it


def test_a_live_ephemeral_key_cannot_mint_more_keys(emulator):
    value = post(emulator, {}).json()["value"]
    assert post(emulator, {}, key=value).status_code == 401


def test_missing_key_gets_401(emulator):
    response = httpx.post(f"{emulator.base_url}/realtime/client_secrets", json={})
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("You didn't provide an API key.")


def test_unknown_paths_and_methods_get_openai_404s(emulator):
    auth = {"Authorization": f"Bearer {emulator.api_key}"}
    response = httpx.get(f"{emulator.base_url}/realtime/client_secrets", headers=auth)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/realtime/client_secrets)"
    assert httpx.post(f"{emulator.base_url}/chat/completions", headers=auth, json={}).status_code == 404


def test_rate_limit_headers_come_with_every_answer(emulator):
    headers = post(emulator, {}).headers
    assert int(headers["x-ratelimit-limit-requests"]) >= int(headers["x-ratelimit-remaining-requests"])
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert headers["openai-version"] == "2020-10-01"


def test_queued_faults_apply_in_order_then_service_resumes(emulator):
    emulator.faults.next_http(429, retry_after=2)
    emulator.faults.next_http(503)
    emulator.faults.next_http(500, retry_after_ms=250)
    first, second, third, fourth = (post(emulator, {}) for _ in range(4))
    assert first.status_code == 429
    assert first.headers["retry-after"] == "2"
    assert first.json()["error"] == {
        "message": "Rate limit reached for requests. Please try again later.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert (second.status_code, second.json()["error"]["type"]) == (503, "server_error")
    assert (third.status_code, third.headers["retry-after-ms"]) == (500, "250")
    assert fourth.status_code == 200
    assert len(emulator.secrets) == 1


def test_faults_by_header_and_query_parameter(emulator):
    by_header = post(
        emulator, {}, headers={"X-Emulator-Fault": "status=429; retry_after=0.5; code=insufficient_quota"}
    )
    assert by_header.status_code == 429
    assert by_header.headers["retry-after"] == "0.5"
    assert by_header.json()["error"]["code"] == "insufficient_quota"
    by_query = httpx.post(
        f"{emulator.base_url}/realtime/client_secrets?emulator_fault=status%3D503",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={},
    )
    assert by_query.status_code == 503


def test_slow_and_malformed_answers(emulator):
    emulator.faults.slow(0.3)
    started = time.monotonic()
    assert post(emulator, {}).status_code == 200
    assert time.monotonic() - started >= 0.3
    emulator.faults.malformed_body()
    broken = post(emulator, {})
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()


def test_requests_are_recorded_with_the_key_masked(emulator):
    post(emulator, {"session": {"type": "realtime"}})
    recorded = emulator.requests[-1]
    assert recorded.json() == {"session": {"type": "realtime"}}
    assert (recorded.status, recorded.auth) == (200, "api_key")
    assert emulator.api_key not in recorded.headers["authorization"]
