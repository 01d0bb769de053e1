"""Session rules and the wire helpers, without sockets."""

from __future__ import annotations

import base64
import json

import pytest

from relay import events
from relay.policy import SessionRules, normalize_locked

CURRENT = {
    "instructions": "Be kind.",
    "tools": [],
    "audio": {"output": {"voice": "alloy"}},
    "max_output_tokens": "inf",
}


def update(**session: object) -> dict[str, object]:
    return {"type": "session.update", "session": {"type": "realtime", **session}}


def test_no_rules_pass_everything():
    rules = SessionRules()
    verdict = rules.check_session_update(update(instructions="anything", tools=[{"name": "x"}]), CURRENT)
    assert verdict.refusal is None
    assert verdict.rewritten is None


def test_voice_allow_list_including_custom_voices():
    rules = SessionRules(allowed_voices=frozenset({"marin", "voice_abc"}))
    refusal = rules.check_session_update(update(audio={"output": {"voice": "alloy"}}), CURRENT).refusal
    assert refusal is not None
    assert refusal.code == "voice_not_allowed"
    assert refusal.param == "session.audio.output.voice"
    assert rules.check_session_update(update(audio={"output": {"voice": "marin"}}), CURRENT).refusal is None
    custom = update(audio={"output": {"voice": {"id": "voice_abc"}}})
    assert rules.check_session_update(custom, CURRENT).refusal is None
    response = {"type": "response.create", "response": {"audio": {"output": {"voice": "ash"}}}}
    assert rules.check_response_create(response, CURRENT).refusal.param == "response.audio.output.voice"


def test_tool_allow_list_by_function_name_or_mcp_label_and_forced_choice():
    rules = SessionRules(tool_allowlist=frozenset({"lookup", "crm"}))
    ok = update(tools=[{"type": "function", "name": "lookup"}, {"type": "mcp", "server_label": "crm"}])
    assert rules.check_session_update(ok, CURRENT).refusal is None
    bad = rules.check_session_update(update(tools=[{"type": "function", "name": "delete_all"}]), CURRENT)
    assert bad.refusal.code == "tool_not_allowed"
    assert bad.refusal.param == "session.tools.0"
    assert "delete_all" in bad.refusal.message
    forced = update(tool_choice={"type": "function", "name": "delete_all"})
    assert rules.check_session_update(forced, CURRENT).refusal.param == "session.tool_choice"
    none_allowed = SessionRules(tool_allowlist=frozenset())
    assert none_allowed.check_session_update(update(tools=[]), CURRENT).refusal is None
    assert none_allowed.check_session_update(update(tools=[{"name": "x"}]), CURRENT).refusal is not None


@pytest.mark.parametrize(("value", "sent"), [(100, 100), (500, 500), (501, 500), ("inf", 500), (True, 500)])
def test_max_output_tokens_above_the_ceiling_becomes_the_ceiling(value, sent):
    rules = SessionRules(max_output_tokens_ceiling=500)
    verdict = rules.check_session_update(update(max_output_tokens=value), CURRENT)
    assert verdict.refusal is None
    forwarded = (
        verdict.rewritten["session"] if verdict.rewritten else update(max_output_tokens=value)["session"]
    )
    assert forwarded["max_output_tokens"] == sent


def test_locked_paths_may_be_written_with_the_session_prefix():
    rules = SessionRules(locked_fields=normalize_locked(["session.audio.output.voice", "type", ""]))
    assert rules.locked_fields == frozenset({"audio.output.voice"})


def test_locking_a_parent_object_by_nulling_it_counts_as_a_change():
    rules = SessionRules(locked_fields=frozenset({"audio.output.voice"}))
    refusal = rules.check_session_update(update(audio=None), CURRENT).refusal
    assert refusal.code == "locked_parameter"
    assert rules.check_session_update(update(audio={"input": {}}), CURRENT).refusal is None


def test_prefix_is_added_to_session_and_response_instructions():
    rules = SessionRules(instructions_prefix="Rule one.")
    rewritten = rules.check_session_update(update(instructions="Talk."), CURRENT).rewritten
    assert rewritten["session"]["instructions"] == "Rule one.\n\nTalk."
    already = rules.check_session_update(update(instructions="Rule one. And more."), CURRENT)
    assert already.rewritten is None
    cleared = rules.check_session_update(update(instructions=""), CURRENT).rewritten
    assert cleared["session"]["instructions"] == "Rule one."
    response = rules.check_response_create(
        {"type": "response.create", "response": {"instructions": "x"}}, CURRENT
    )
    assert response.rewritten["response"]["instructions"] == "Rule one.\n\nx"


def test_upstream_event_type_without_parsing_or_with():
    assert (
        events.upstream_event_type('{"type":"response.output_audio.delta","delta":"AAAA"}')
        == events.AUDIO_DELTA
    )
    assert events.upstream_event_type('{"event_id": "event_1", "type": "response.done"}') == "response.done"
    assert (
        events.upstream_event_type('{"response": {"type": "x"}, "type": "response.done"}') == "response.done"
    )
    assert events.upstream_event_type("nonsense") is None


def test_audio_delta_bytes_are_counted_from_the_base64_length():
    for size in (0, 1, 2, 3, 4800, 4801):
        frame = json.dumps({"type": events.AUDIO_DELTA, "delta": base64.b64encode(b"\x07" * size).decode()})
        assert events.audio_delta_bytes(frame) == size


def test_wrapped_binary_audio_is_a_valid_append():
    event = json.loads(events.wrap_audio(b"\x01\x02\x03\x04"))
    assert event == {"type": events.APPEND, "audio": base64.b64encode(b"\x01\x02\x03\x04").decode()}


def test_duplicate_keys_are_found_at_any_depth():
    assert events.has_duplicate_keys('{"a": {"b": 1, "b": 2}}') == "b"
    assert events.has_duplicate_keys('{"a": [{"c": 1}], "b": 2}') is None
    assert not events.plain_append('{"type":"input_audio_buffer.append","audio":"","type":"x"}')
