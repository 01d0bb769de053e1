"""End to end: the unmodified official `openai` SDK → the platform (daphne, the whole ASGI app) →
the relay → the built-in OpenAI emulator, plus the fault cases through the emulator's fault
injection. Nothing is faked here but OpenAI itself (the emulator)."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from typing import Any

import pytest
import websockets
from openai import OpenAI
from websockets.sync.client import connect

from audit.models import AuditEvent
from conftest import make_key
from relay.core import CLOSE_UPSTREAM_FAILED, EndReason
from relay.models import RealtimeSession
from relay.tests.conftest import make_relay_token
from tenants.models import Scope
from upstream.tests.support import speech
from usage.models import Metric, UsageEvent
from usage.services import quota_used

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = 960  # 20 ms of 24 kHz PCM16


def ended(tenant: Any, timeout: float = 10) -> RealtimeSession:
    """The tenant's latest session once the relay has finished with it. Waits on the server's relay
    tasks rather than polling the database: with SQLite in memory, a read from this thread while
    the server writes fails with "table is locked" (on either side)."""
    deadline = time.monotonic() + timeout
    while relay_tasks_left():
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.05)
    session = RealtimeSession.objects.filter(tenant=tenant).order_by("-started_at").first()
    assert session is not None
    assert session.status == RealtimeSession.Status.ENDED
    return session


def relay_tasks_left() -> list[str]:
    """Relay tasks still alive in the server's event loop (there must be none once sessions end)."""
    import asyncio

    from upstream.testing import ReactorThread

    return ReactorThread.call(
        lambda: [
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("relay-") and not t.done()
        ]
    )


def read_until_closed(ws: Any, on_event: Any = None) -> tuple[list[dict[str, Any]], int | None, float]:
    """Events until the server closes (each with its arrival time in "_at"), the close code, when."""
    events: list[dict[str, Any]] = []
    try:
        while True:
            event = json.loads(ws.recv(timeout=10))
            event["_at"] = time.monotonic()
            events.append(event)
            if on_event is not None:
                on_event(event)
    except websockets.ConnectionClosed as exc:
        return events, exc.rcvd.code if exc.rcvd else None, time.monotonic()


def handshake_status(server: Any, credential: str) -> int:
    try:
        with connect(
            f"{server.ws_url}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {credential}"},
        ):
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


def stream(connection: Any, audio: bytes) -> None:
    for i in range(0, len(audio), CHUNK):
        connection.input_audio_buffer.append(audio=base64.b64encode(audio[i : i + CHUNK]).decode())


def test_official_sdk_session_through_the_relay(live_server_asgi, emulator, tenant):
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT])
    client = OpenAI(base_url=f"{live_server_asgi.http_url}/v1", api_key=key.plaintext)
    audio_out = bytearray()
    with client.realtime.connect(model="gpt-realtime") as connection:
        assert connection.recv().type == "session.created"
        connection.session.update(
            session={
                "type": "realtime",
                "instructions": "Answer briefly.",
                "audio": {"input": {"turn_detection": None}, "output": {"voice": "marin"}},
            }
        )
        updated = connection.recv()
        assert updated.type == "session.updated"
        assert updated.session.instructions == "Answer briefly."
        stream(connection, speech(600))  # 30 appends of 20 ms
        connection.input_audio_buffer.commit()
        connection.response.create()
        for event in connection:
            if event.type == "response.output_audio.delta":
                audio_out += base64.b64decode(event.delta)
            if event.type == "response.done":
                done = event
                break
    assert audio_out  # a spoken answer came back through the relay
    usage = done.response.usage

    session = ended(tenant)
    assert session.end_reason == EndReason.CLIENT_CLOSED
    assert session.model == "gpt-realtime"
    assert session.api_key_id == key.api_key.pk
    assert session.audio_in_ms == 600
    assert session.audio_out_ms == len(audio_out) // 48
    assert session.input_tokens == usage.input_tokens
    assert session.output_tokens == usage.output_tokens
    assert session.cost_usd > 0
    assert session.upstream_session_id.startswith("sess_")
    metered = UsageEvent.objects.get(natural_key=f"resp:{session.pk}:{done.response.id}")
    assert metered.output_audio_tokens == usage.output_token_details.audio_tokens
    assert metered.audio_in_ms == 600
    assert metered.cost_usd == session.cost_usd
    assert quota_used(tenant=tenant, metric=Metric.TOKENS) == usage.total_tokens
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0
    actions = list(AuditEvent.objects.filter(tenant=tenant).order_by("seq").values_list("action", flat=True))
    assert actions[-2:] == ["session.opened", "session.ended"]
    # upstream saw the client's events exactly as the client sent them
    upstream_side = emulator.wait_for_connection()
    appends = [e for e in upstream_side.received_events() if e["type"] == "input_audio_buffer.append"]
    assert len(appends) == 30
    assert relay_tasks_left() == []


def test_relay_token_session_with_the_sdk(live_server_asgi, emulator, tenant, api_key):
    token, secret = make_relay_token(
        tenant,
        api_key.api_key,
        session_config={
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Issued instructions.",
            "output_modalities": ["text"],
        },
    )
    client = OpenAI(base_url=f"{live_server_asgi.http_url}/v1", api_key=token)
    with client.realtime.connect(model="gpt-realtime") as connection:
        created = connection.recv()
        assert created.type == "session.created"
        assert created.session.instructions == "Issued instructions."  # the token's config, already applied
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
        )
        connection.response.create()
        for event in connection:
            if event.type == "response.done":
                break
    session = ended(tenant)
    assert session.client_secret_id == secret.pk
    assert session.output_tokens > 0
    assert handshake_status(live_server_asgi, token) == 403  # single use; daphne: a close before accept


def test_upstream_dropping_mid_stream(live_server_asgi, emulator, tenant):
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT])
    # session.created, session.updated, then the first response (text: about 10 events), then audio
    emulator.faults.drop_socket_after(20)
    received: list[dict[str, Any]] = []
    with connect(
        f"{live_server_asgi.ws_url}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key.plaintext}"},
    ) as ws:
        ws.send(
            json.dumps(
                {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
            )
        )
        ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "one two three"}],
                    },
                }
            )
        )
        ws.send('{"type":"response.create"}')

        def then_audio(event: dict[str, Any]) -> None:
            if event["type"] == "response.done":
                ws.send('{"type":"response.create","response":{"output_modalities":["audio"]}}')

        received, code, closed_at = read_until_closed(ws, then_audio)
    assert code == CLOSE_UPSTREAM_FAILED
    assert closed_at - received[-1]["_at"] < 1.0  # the error event, then the close within a second
    assert received[-1]["type"] == "error"
    assert received[-1]["error"]["code"] == "upstream_disconnected"
    session = ended(tenant)
    assert session.end_reason == EndReason.UPSTREAM_LOST
    assert session.close_code == CLOSE_UPSTREAM_FAILED
    # the response that completed before the drop is metered and kept
    dones = [e for e in received if e["type"] == "response.done"]
    assert len(dones) == 1
    assert UsageEvent.objects.filter(natural_key=f"resp:{session.pk}:{dones[0]['response']['id']}").exists()
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0
    assert relay_tasks_left() == []


def test_upstream_refusing_the_connection(live_server_asgi, emulator, tenant):
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT])
    emulator.faults.reject_socket()
    with connect(
        f"{live_server_asgi.ws_url}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key.plaintext}"},
    ) as ws:
        received, code, _ = read_until_closed(ws)
    assert [e["type"] for e in received] == ["error"]
    assert received[0]["error"]["code"] in ("upstream_unavailable", "upstream_rate_limited")
    assert code == CLOSE_UPSTREAM_FAILED
    session = ended(tenant)
    assert session.end_reason == EndReason.UPSTREAM_REFUSED
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0
    assert relay_tasks_left() == []


def test_client_vanishing_without_a_close_frame(live_server_asgi, emulator, tenant):
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT])
    ws = connect(
        f"{live_server_asgi.ws_url}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key.plaintext}"},
    )
    ws.recv(timeout=10)
    ws.send(
        json.dumps({"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}})
    )
    ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
    )
    ws.send('{"type":"response.create"}')
    while json.loads(ws.recv(timeout=10))["type"] != "response.done":
        pass
    # gone: no close frame, the TCP connection is reset
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()
    session = ended(tenant)
    assert session.end_reason == EndReason.CLIENT_GONE
    assert session.output_tokens > 0  # metered usage kept
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0
    assert emulator.wait_for_connection().closed.is_set()  # the upstream socket was closed too
    assert relay_tasks_left() == []
