"""The request body is OpenAI's, checked against the official SDK's own types (`openai` is a dev
dependency, so this is where the platform's validation meets the schema of record)."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Sequence

import pytest
import typing_extensions
from openai.types.realtime.client_secret_create_params import ClientSecretCreateParams
from pydantic import BaseModel, TypeAdapter

from realtime_platform.errors import BadRequest
from tokens.openai_schema import ClientSecretCreateRequest, parse_client_secret_request, request_as_dict

LEAVES = (str, int, float, bool, type(None), object)


def _sdk_paths(tp: typing.Any, prefix: str, out: set[str], seen: frozenset[typing.Any] = frozenset()) -> None:
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if origin in (typing_extensions.Required, typing_extensions.NotRequired, typing_extensions.Annotated):
        _sdk_paths(args[0], prefix, out, seen)
    elif typing_extensions.is_typeddict(tp):
        if tp in seen:
            return
        for name, hint in typing_extensions.get_type_hints(tp).items():
            out.add(f"{prefix}{name}")
            _sdk_paths(hint, f"{prefix}{name}.", out, seen | {tp})
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            _sdk_paths(arg, prefix, out, seen)
    elif origin in (list, Sequence) or (origin is not None and "SequenceNotStr" in str(origin)):
        _sdk_paths(args[0], f"{prefix}[].", out, seen)
    elif origin is dict:
        _sdk_paths(args[1], f"{prefix}{{}}.", out, seen)
    elif origin is typing.Literal or tp in LEAVES:
        return
    else:
        raise AssertionError(f"unhandled SDK type {tp!r} at {prefix}")


def _our_paths(tp: typing.Any, prefix: str, out: set[str]) -> None:
    origin = typing_extensions.get_origin(tp)
    args = typing_extensions.get_args(tp)
    if origin is typing_extensions.Annotated:
        _our_paths(args[0], prefix, out)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, info in tp.model_fields.items():
            out.add(f"{prefix}{name}")
            _our_paths(info.annotation, f"{prefix}{name}.", out)
            for meta in info.metadata:
                del meta  # constraints only
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            _our_paths(arg, prefix, out)
    elif origin is list:
        _our_paths(args[0], f"{prefix}[].", out)
    elif origin is dict:
        _our_paths(args[1], f"{prefix}{{}}.", out)
    elif origin is typing.Literal or tp in LEAVES or tp is typing.Any:
        return
    else:
        raise AssertionError(f"unhandled type {tp!r} at {prefix}")


def test_the_schema_knows_exactly_the_fields_of_the_sdk_request_types():
    sdk: set[str] = set()
    ours: set[str] = set()
    _sdk_paths(ClientSecretCreateParams, "", sdk)
    _our_paths(ClientSecretCreateRequest, "", ours)
    # Where OpenAI names a field in a union member the SDK types leave untyped (a function tool's
    # JSON-schema `parameters`, tracing `metadata`), both sides stop at the field itself.
    assert ours - sdk == set(), "fields we accept that the SDK does not know"
    assert sdk - ours == set(), "fields of the SDK we would refuse as unknown"
    assert {"session.audio.input.turn_detection.idle_timeout_ms", "session.tools.[].server_label"} <= ours


FULL_REALTIME = {
    "expires_after": {"anchor": "created_at", "seconds": 600},
    "session": {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are a friendly assistant.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "names"},
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
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.1},
        },
        "include": ["item.input_audio_transcription.logprobs"],
        "tools": [
            {
                "type": "function",
                "name": "lookup",
                "description": "Look up an order",
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
            },
            {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.com", "headers": None},
        ],
        "tool_choice": {"type": "function", "name": "lookup"},
        "max_output_tokens": 1024,
        "tracing": {"workflow_name": "support", "metadata": {"team": "a"}},
        "truncation": {
            "type": "retention_ratio",
            "retention_ratio": 0.8,
            "token_limits": {"post_instructions": 0},
        },
        "prompt": {"id": "pmpt_1", "version": "2", "variables": {"city": "Paris"}},
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": False,
    },
}
FULL_TRANSCRIPTION = {
    "session": {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcma"},
                "transcription": {"model": "whisper-1", "languages": ["en", "fr"], "delay": "low"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
                "noise_reduction": {"type": "far_field"},
            }
        },
        "include": ["item.input_audio_transcription.logprobs"],
    }
}
VALID = [
    {},
    {"session": {"type": "realtime"}},
    {"expires_after": {"seconds": 10}},
    {
        "session": {
            "type": "realtime",
            "max_output_tokens": "inf",
            "tool_choice": "required",
            "tracing": "auto",
        }
    },
    {"session": {"type": "realtime", "audio": {"output": {"voice": {"id": "voice_123"}}}}},
    {"session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}},
    {"session": {"type": "realtime", "tools": [{"name": "untyped_function_tool"}]}},
    FULL_REALTIME,
    FULL_TRANSCRIPTION,
]


@pytest.mark.parametrize("body", VALID, ids=range(len(VALID)))
def test_valid_bodies_pass_ours_and_the_sdk_types_and_nothing_is_lost(body):
    TypeAdapter(ClientSecretCreateParams).validate_python(body, strict=True)
    parsed = parse_client_secret_request(json.dumps(body).encode())
    assert request_as_dict(parsed) == body  # forwarded as sent: no field dropped, none invented


def test_nulls_the_docs_allow_but_the_sdk_types_omit_are_accepted():
    # "can be set to null to turn off" (SDK docstrings of transcription and noise_reduction)
    body = {
        "session": {"type": "realtime", "audio": {"input": {"transcription": None, "noise_reduction": None}}}
    }
    assert request_as_dict(parse_client_secret_request(json.dumps(body).encode())) == body


def rt(**fields):
    return {"session": {"type": "realtime", **fields}}


def audio_in(**fields):
    return rt(audio={"input": fields})


def vad(**fields):
    return audio_in(turn_detection=fields)


S = "session."
INVALID = [
    # (body, param, code)
    (rt(voice="alloy"), S + "voice", "unknown_parameter"),
    (rt(modalities=["audio"]), S + "modalities", "unknown_parameter"),
    ({"session": {"model": "gpt-realtime"}}, S + "type", "missing_required_parameter"),
    ({"session": {"type": "conversation"}}, S + "type", "invalid_value"),
    ({"session": "realtime"}, "session", "invalid_type"),
    ({"session": {"type": "transcription", "instructions": "x"}}, S + "instructions", "unknown_parameter"),
    ({"expires_after": {"seconds": 9}}, "expires_after.seconds", "integer_below_min_value"),
    ({"expires_after": {"seconds": 7201}}, "expires_after.seconds", "integer_above_max_value"),
    ({"expires_after": {"seconds": "600"}}, "expires_after.seconds", "invalid_type"),
    ({"expires_after": {"seconds": 60.5}}, "expires_after.seconds", "invalid_type"),
    ({"expires_after": {"anchor": "now"}}, "expires_after.anchor", "invalid_value"),
    (rt(model=4), S + "model", "invalid_type"),
    (rt(max_output_tokens=4097), S + "max_output_tokens", "integer_above_max_value"),
    (rt(max_output_tokens=True), S + "max_output_tokens", "invalid_type"),
    (rt(output_modalities=["text", "audio"]), S + "output_modalities", "array_above_max_length"),
    (rt(output_modalities=["video"]), S + "output_modalities.0", "invalid_value"),
    (audio_in(format={"type": "audio/pcm", "rate": 16000}), S + "audio.input.format.rate", "invalid_value"),
    (audio_in(format={"type": "audio/opus"}), S + "audio.input.format.type", "invalid_value"),
    (rt(audio={"output": {"speed": 1.6}}), S + "audio.output.speed", "decimal_above_max_value"),
    (rt(audio={"output": {"voice": 7}}), S + "audio.output.voice", "invalid_type"),
    (vad(type="server_vad", idle_timeout_ms=100), S + "audio.input.turn_detection.idle_timeout_ms",
     "integer_below_min_value"),
    (vad(type="semantic_vad", threshold=0.5), S + "audio.input.turn_detection.threshold",
     "unknown_parameter"),
    (vad(create_response=True), S + "audio.input.turn_detection.type", "missing_required_parameter"),
    (rt(tools=[{"type": "web_search"}]), S + "tools.0.type", "invalid_value"),
    (rt(tools=[{"type": "mcp", "server_label": "x"}]), S + "tools.0", "invalid_value"),
    (rt(tools=[{"type": "mcp", "server_url": "https://x"}]), S + "tools.0.server_label",
     "missing_required_parameter"),
    (rt(tool_choice="sometimes"), S + "tool_choice", "invalid_value"),
    (rt(tool_choice={"type": "function"}), S + "tool_choice.name", "missing_required_parameter"),
    (rt(tracing="on"), S + "tracing", "invalid_value"),
    (rt(truncation={"type": "retention_ratio", "retention_ratio": 1.5}), S + "truncation.retention_ratio",
     "decimal_above_max_value"),
    (rt(prompt={"version": "1"}), S + "prompt.id", "missing_required_parameter"),
    (rt(reasoning={"effort": "extreme"}), S + "reasoning.effort", "invalid_value"),
    (rt(parallel_tool_calls=1), S + "parallel_tool_calls", "invalid_type"),
    ({"client_secret": {"expires_after": {"seconds": 60}}}, "client_secret", "unknown_parameter"),
    ([{"session": {"type": "realtime"}}], None, "invalid_type"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "param", "code"), INVALID, ids=[str(case[1]) for case in INVALID])
def test_each_invalid_body_is_an_openai_shaped_400_naming_the_param(body, param, code):
    with pytest.raises(BadRequest) as excinfo:
        parse_client_secret_request(json.dumps(body).encode())
    error = excinfo.value.as_body()["error"]
    assert excinfo.value.status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    if param and code != "invalid_value":  # OpenAI's "Invalid value: 'x'…" names only the value
        assert f"'{param}'" in error["message"]


def test_type_errors_we_refuse_are_refused_by_the_sdk_types_too():
    adapter = TypeAdapter(ClientSecretCreateParams)
    for body, _param, code in INVALID:
        if code == "invalid_type" and isinstance(body, dict):
            with pytest.raises(ValueError, match="validation error"):
                adapter.validate_python(body, strict=True)


def test_openai_wording_for_the_common_mistakes():
    def message(body):
        with pytest.raises(BadRequest) as excinfo:
            parse_client_secret_request(json.dumps(body).encode())
        return excinfo.value.message

    assert message({"session": {"type": "realtime", "voice": "x"}}) == "Unknown parameter: 'session.voice'."
    assert message({"session": {}}) == "Missing required parameter: 'session.type'."
    assert message({"session": {"type": "x"}}) == (
        "Invalid value: 'x'. Supported values are: 'realtime' and 'transcription'."
    )
    assert message({"expires_after": {"seconds": 5}}) == (
        "Invalid 'expires_after.seconds': integer below minimum value. "
        "Expected a value >= 10, but got 5 instead."
    )
    assert message({"session": {"type": "realtime", "instructions": 5}}) == (
        "Invalid type for 'session.instructions': expected a string, but got an integer instead."
    )


def test_malformed_json_and_an_empty_body():
    with pytest.raises(BadRequest) as excinfo:
        parse_client_secret_request(b'{"session": ')
    assert excinfo.value.code == "invalid_json"
    assert request_as_dict(parse_client_secret_request(b"")) == {}  # as {}: OpenAI's defaults apply
