"""The upstream client against the emulator's injected faults: retries, backoff, error mapping,
request ids, and a socket that passes frames through untouched."""

from __future__ import annotations

import json
import logging
import socket
from email.utils import formatdate

import pytest

from audit.actors import Actor
from tenants.models import Tenant
from tenants.services import upstream_credential_set
from upstream.client import UpstreamClient, upstream_client_for
from upstream.errors import UpstreamClosed, UpstreamError, parse_retry_after
from upstream.tests.support import b64, speech

BODY = {"session": {"type": "realtime", "model": "gpt-realtime"}}


def statuses(emulator):
    return [request.status for request in emulator.requests]


def retry_waits(caplog):
    return [
        r.getMessage().rsplit("wait_s=", 1)[1] for r in caplog.records if "upstream retry" in r.getMessage()
    ]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="upstream.client")
    return caplog


async def test_creates_a_client_secret(emulator):
    result = await emulator.client().create_client_secret(body=BODY)
    assert result.value.startswith("ek_")
    assert result.session["model"] == "gpt-realtime"
    assert result.request_id == emulator.requests[-1].request_id
    assert result.value not in repr(result)


async def test_429_is_retried_after_the_wait_upstream_asked_for(emulator, logs):
    emulator.faults.next_http(429, retry_after=0.2)
    result = await emulator.client().create_client_secret(body=BODY)
    assert result.value.startswith("ek_")
    assert statuses(emulator) == [429, 200]
    assert retry_waits(logs) == ["0.20"]


async def test_retry_after_ms_wins_over_retry_after(emulator, logs):
    emulator.faults.next_http(503, retry_after=5, retry_after_ms=150)
    await emulator.client().create_client_secret(body=BODY)
    assert retry_waits(logs) == ["0.15"]


async def test_5xx_backs_off_exponentially_with_jitter(emulator, logs):
    emulator.faults.next_http(500, times=2)
    await emulator.client(max_retries=2, backoff_base=0.02).create_client_secret(body=BODY)
    assert statuses(emulator) == [500, 500, 200]
    first, second = (float(w) for w in retry_waits(logs))
    assert 0.01 <= first <= 0.02  # half of the 0.02 s step fixed, half random
    assert 0.02 <= second <= 0.04  # the step doubles


async def test_retries_are_bounded_and_the_last_error_is_raised(emulator):
    emulator.faults.next_http(503, times=5)
    with pytest.raises(UpstreamError) as caught:
        await emulator.client(max_retries=2).create_client_secret(body=BODY)
    error = caught.value
    assert statuses(emulator) == [503, 503, 503]
    assert (error.status, error.type, error.retryable) == (503, "server_error", True)
    assert error.request_id == emulator.requests[-1].request_id


async def test_bad_requests_are_not_retried_and_keep_openais_fields(emulator):
    with pytest.raises(UpstreamError) as caught:
        await emulator.client().create_client_secret(body={"session": {"type": "realtime", "voice": "alloy"}})
    error = caught.value
    assert statuses(emulator) == [400]
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "unknown_parameter",
        "session.voice",
    )
    assert error.retryable is False
    assert error.message == "Unknown parameter: 'session.voice'."
    assert error.as_error_body()["error"]["param"] == "session.voice"


async def test_a_bad_key_is_a_401_without_retries_and_without_the_key_in_the_error(emulator):
    client = emulator.client(api_key="sk-this-key-is-not-valid-at-all")
    with pytest.raises(UpstreamError) as caught:
        await client.create_client_secret(body=BODY)
    assert statuses(emulator) == [401]
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (401, "invalid_api_key", False)
    assert "sk-this-key-is-not-valid-at-all" not in str(caught.value)


async def test_insufficient_quota_429_is_not_retried(emulator):
    emulator.faults.next_http(429, code="insufficient_quota", type="insufficient_quota")
    with pytest.raises(UpstreamError) as caught:
        await emulator.client().create_client_secret(body=BODY)
    assert statuses(emulator) == [429]
    assert caught.value.retryable is False


async def test_a_retry_after_longer_than_we_wait_goes_back_to_the_caller(emulator):
    emulator.faults.next_http(429, retry_after=30)
    with pytest.raises(UpstreamError) as caught:
        await emulator.client(max_retry_wait=5).create_client_secret(body=BODY)
    assert statuses(emulator) == [429]
    assert caught.value.retryable is True
    assert caught.value.retry_after == 30


async def test_a_read_timeout_is_retried(emulator, logs):
    emulator.faults.slow(1.0)
    result = await emulator.client(read_timeout=0.2).create_client_secret(body=BODY)
    assert result.value.startswith("ek_")
    assert len(emulator.requests) == 2
    assert any("timed out phase=read" in r.getMessage() for r in logs.records)


async def test_timeouts_that_persist_become_a_retryable_error_without_status(emulator):
    emulator.faults.slow(1.0, times=2)
    with pytest.raises(UpstreamError) as caught:
        await emulator.client(read_timeout=0.2, max_retries=1).create_client_secret(body=BODY)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (None, "timeout", True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connection_failures_are_retried_then_reported(logs):
    client = UpstreamClient(
        api_key="sk-anything-0123456789", base_url=f"http://127.0.0.1:{free_port()}/v1", backoff_base=0.01
    )
    with pytest.raises(UpstreamError) as caught:
        await client.create_client_secret(body=BODY)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        None,
        "connection_error",
        True,
    )
    assert len(retry_waits(logs)) == 2  # UPSTREAM_MAX_RETRIES


async def test_a_garbled_success_is_an_error_not_a_secret(emulator):
    emulator.faults.malformed_body()
    with pytest.raises(UpstreamError) as caught:
        await emulator.client().create_client_secret(body=BODY)
    assert (caught.value.code, caught.value.retryable) == ("bad_upstream_response", False)
    assert len(emulator.requests) == 1


def test_the_sync_variant_retries_and_maps_errors_the_same_way(emulator, logs):
    emulator.faults.next_http(429, retry_after=0.05)
    client = emulator.client()
    assert client.create_client_secret_sync(body=BODY).value.startswith("ek_")
    assert statuses(emulator) == [429, 200]
    with pytest.raises(UpstreamError) as caught:
        client.create_client_secret_sync(body={"expires_after": {"anchor": "created_at", "seconds": 1}})
    assert (caught.value.status, caught.value.param) == (400, "expires_after.seconds")


def test_request_ids_travel_both_ways_and_keys_never_reach_the_logs(emulator, logs):
    emulator.faults.next_http(503)
    result = emulator.client().create_client_secret_sync(body=BODY, request_id="req_ours_123")
    assert [r.headers["x-client-request-id"] for r in emulator.requests] == ["req_ours_123"] * 2
    text = "\n".join(record.getMessage() for record in logs.records)
    assert f"request_id={emulator.requests[0].request_id}" in text  # the failed attempt's upstream id
    assert f"request_id={result.request_id}" in text
    assert emulator.api_key not in text
    assert result.value not in text


# --- the socket -------------------------------------------------------------------------------


async def test_socket_frames_pass_through_untouched_both_ways(emulator):
    upstream = await emulator.client().connect(model="gpt-realtime", session_id_hint="sess_local")
    first = await upstream.recv()
    weird_spacing = '{ "type" :"input_audio_buffer.append",  "audio": "AUDIO" ,"event_id":"é"}'.replace(
        "AUDIO", b64(speech(20))
    )
    await upstream.send(weird_spacing)
    await upstream.send('{"type":"response.create","response":{"output_modalities":["text"]}}')
    frames = [first]
    while '"response.done"' not in frames[-1]:
        frames.append(await upstream.recv())
    await upstream.close()
    connection = emulator.wait_for_connection()
    assert connection.received[0] == weird_spacing  # not re-encoded on the way up
    assert frames == connection.sent[: len(frames)]  # nor on the way down
    assert all(isinstance(frame, str) for frame in frames)
    assert json.loads(first)["type"] == "session.created"


async def test_binary_frames_are_sent_as_binary(emulator):
    upstream = await emulator.client().connect(model="gpt-realtime")
    await upstream.recv()
    await upstream.send(b"\x00\x01binary")
    error = json.loads(await upstream.recv())
    await upstream.close()
    assert emulator.wait_for_connection().received == [b"\x00\x01binary"]
    assert error["error"]["code"] == "invalid_event"


async def test_connecting_with_an_ephemeral_key_and_the_browser_style_url(emulator):
    secret = await emulator.client().create_client_secret(body=BODY)
    upstream = await emulator.client(api_key=secret.value).connect(model="gpt-realtime")
    assert json.loads(await upstream.recv())["type"] == "session.created"
    await upstream.close()


async def test_a_refused_session_is_a_failed_connect(emulator):
    with pytest.raises(UpstreamError) as caught:
        await emulator.client(api_key="sk-wrong-0123456789abcdef").connect(model="gpt-realtime")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (401, "invalid_api_key", False)
    with pytest.raises(UpstreamError) as unknown_model:
        await emulator.client().connect(model="gpt-9")
    assert (unknown_model.value.status, unknown_model.value.code) == (400, "model_not_found")


async def test_a_refused_handshake_is_an_upstream_error_with_its_status(emulator):
    emulator.faults.reject_socket()
    with pytest.raises(UpstreamError) as caught:
        await emulator.client().connect(model="gpt-realtime")
    assert caught.value.status == 403
    assert caught.value.retryable is False


async def test_a_slow_handshake_times_out(emulator):
    emulator.faults.slow_socket(0, accept_delay=1.0)
    with pytest.raises(UpstreamError) as caught:
        await emulator.client(connect_timeout=0.2).connect(model="gpt-realtime")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (None, "timeout", True)


async def test_a_dropped_socket_ends_with_upstream_closed(emulator):
    emulator.faults.drop_socket_after(2)
    upstream = await emulator.client().connect(model="gpt-realtime")
    await upstream.recv()  # session.created
    await upstream.send('{"type":"input_audio_buffer.clear"}')
    assert json.loads(await upstream.recv())["type"] == "input_audio_buffer.cleared"
    await upstream.send('{"type":"input_audio_buffer.clear"}')
    with pytest.raises(UpstreamClosed) as closed:
        await upstream.recv()
    assert closed.value.code == 1011
    with pytest.raises(UpstreamClosed):
        await upstream.send('{"type":"input_audio_buffer.clear"}')


async def test_a_malformed_frame_reaches_the_caller_as_it_came(emulator):
    emulator.faults.malformed_frame_after(1)
    upstream = await emulator.client().connect(model="gpt-realtime")
    await upstream.recv()
    await upstream.send('{"type":"input_audio_buffer.clear"}')
    broken = await upstream.recv()
    await upstream.close()
    with pytest.raises(ValueError):
        json.loads(broken)
    assert broken == emulator.wait_for_connection().sent[1]


async def test_faults_can_be_asked_for_in_the_socket_url(emulator):
    upstream = await emulator.client(base_url=emulator.base_url).connect(model="gpt-realtime")
    await upstream.close()
    client = emulator.client()
    url = client.realtime_url(model="gpt-realtime") + "&emulator_fault=drop_after%3D1"
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {emulator.api_key}"}) as ws:
        await ws.recv()
        await ws.send('{"type":"input_audio_buffer.clear"}')
        with pytest.raises(Exception):  # noqa: B017  (ConnectionClosedError 1011)
            await ws.recv()
        assert ws.close_code == 1011


def test_realtime_url_follows_the_base_url():
    assert UpstreamClient(api_key="k", base_url="https://api.openai.com/v1").realtime_url(
        model="gpt-realtime"
    ) == ("wss://api.openai.com/v1/realtime?model=gpt-realtime")
    assert UpstreamClient(api_key="k", base_url="http://127.0.0.1:8000/_emulator/v1/").realtime_url(
        call_id="rtc_1"
    ) == ("ws://127.0.0.1:8000/_emulator/v1/realtime?call_id=rtc_1")


# --- which key ------------------------------------------------------------------------------


@pytest.mark.django_db
async def test_platform_tenants_use_the_platform_key(emulator, tenant):
    client = upstream_client_for(tenant)
    assert client.base_url == emulator.base_url
    await client.create_client_secret(body=BODY)
    assert emulator.requests[-1].auth == "api_key"


@pytest.mark.django_db
def test_platform_key_is_openai_api_key_when_set(settings, tenant):
    settings.OPENAI_API_KEY = "sk-real-platform-key-0123456789"
    settings.UPSTREAM_EMULATOR = False
    assert upstream_client_for(tenant)._api_key == "sk-real-platform-key-0123456789"


@pytest.mark.django_db
def test_tenants_with_their_own_key_use_it_decrypted_at_call_time(emulator, tenant):
    own_key = "sk-tenant-own-key-0123456789abcd"
    upstream_credential_set(tenant=tenant, secret=own_key, actor=Actor.system("tests"))
    tenant.upstream_mode = Tenant.UpstreamMode.OWN
    tenant.save(update_fields=["upstream_mode"])
    emulator.add_api_key(own_key)
    upstream_client_for(tenant).create_client_secret_sync(body=BODY)
    assert emulator.requests[-1].headers["authorization"].endswith(own_key[-4:])
    assert emulator.requests[-1].headers["authorization"] != f"Bearer {emulator.api_key}"[:-4] + own_key[-4:]


@pytest.mark.django_db
def test_own_mode_without_a_stored_key_fails_clearly(tenant):
    tenant.upstream_mode = Tenant.UpstreamMode.OWN
    with pytest.raises(UpstreamError) as caught:
        upstream_client_for(tenant)
    assert (caught.value.code, caught.value.retryable) == ("upstream_key_missing", False)


def test_retry_after_parsing():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": formatdate(1000.0 + 30, usegmt=True)}, now=1000.0) == 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
