"""The relay behind a real ASGI server, over real TCP: what only a server can show (HTTP denial
statuses, 1009 for real oversize frames, a client that stops reading, a peer that vanished and
is found by ping, the server shutting down). OpenAI is still the scripted fake."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from relay.core import CLOSE_CLIENT_TOO_SLOW, CLOSE_SERVER_RESTART, CLOSE_TOO_BIG, EndReason
from relay.models import RealtimeSession
from relay.tests.conftest import db
from relay.tests.servers import DaphneThread, UvicornThread
from usage.models import Metric
from usage.services import quota_used

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_relay")]


Server = UvicornThread | DaphneThread


@pytest.fixture(params=["uvicorn", "daphne"])
def server(request: Any, fast_relay: Any, _daphne_reactor: None) -> Iterator[Server]:
    quick_pings = request.node.get_closest_marker("quick_pings") is not None
    fast_relay.RELAY_PING_INTERVAL = 0.5 if quick_pings else 30
    fast_relay.RELAY_PING_TIMEOUT = 1 if quick_pings else 30
    fast_relay.RELAY_SERVER_MAX_MESSAGE_BYTES = 2 * fast_relay.RELAY_MAX_FRAME_BYTES
    live: Server = UvicornThread() if request.param == "uvicorn" else DaphneThread()
    live.start()
    yield live
    live.stop()


def url(server: Server, model: str = "gpt-realtime") -> str:
    return f"{server.ws_url}/v1/realtime?model={model}"


async def wait_ended(tenant: Any, timeout: float = 10) -> RealtimeSession:
    async with asyncio.timeout(timeout):
        while True:
            rows = await db(lambda: list(RealtimeSession.objects.filter(tenant=tenant)))()
            if rows and rows[0].status == RealtimeSession.Status.ENDED:
                return rows[0]
            await asyncio.sleep(0.05)


class RawClient:
    """A WebSocket client on a plain blocking socket with a small receive buffer: it completes the
    handshake and then does nothing unless told (a client that stopped reading, or vanished)."""

    def __init__(self, port: int, key: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.connect(("127.0.0.1", port))
        nonce = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {key}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        self.status = int(head.split(b" ", 2)[1])

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81]) + (
            bytes([0x80 | len(payload)])
            if len(payload) < 126
            else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        )
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close(self) -> None:
        self.sock.close()


async def test_refusal_happens_on_the_handshake(server, tenant, fake_openai):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url(server), additional_headers={"Authorization": "Bearer rtp_sk_nope"}):
            pass
    response = refused.value.response
    if server.name == "uvicorn":  # supports the ASGI websocket.http.response extension
        assert response.status_code == 401
        assert json.loads(response.body)["error"]["code"] == "invalid_api_key"
    else:  # daphne 4.2.3 does not: a close before accept, which it answers with 403
        assert response.status_code == 403
    assert fake_openai.calls == []


async def test_relayed_session_over_real_sockets(server, tenant, connect_key, fake_openai):
    async with connect(
        url(server), additional_headers={"Authorization": f"Bearer {connect_key.plaintext}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(
            json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 960).decode()})
        )
        await ws.send(b"\x00\x00" * 480)  # a raw binary frame: PCM16 audio
        await ws.send('{"type":"response.create"}')
        while json.loads(await ws.recv())["type"] != "response.done":
            pass
    row = await wait_ended(tenant)
    assert row.end_reason == EndReason.CLIENT_CLOSED
    assert row.audio_in_ms == 40
    assert await db(quota_used)(tenant=tenant, metric=Metric.SESSIONS) == 0


async def test_frame_over_the_limit_closes_with_1009(server, tenant, connect_key, fake_openai, settings):
    async with connect(
        url(server), additional_headers={"Authorization": f"Bearer {connect_key.plaintext}"}
    ) as ws:
        await ws.recv()
        big = json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\0" * settings.RELAY_MAX_FRAME_BYTES).decode(),
            }
        )
        await ws.send(big)
        error = json.loads(await ws.recv())
        assert error["error"]["code"] == "frame_too_large"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == CLOSE_TOO_BIG
    assert (await wait_ended(tenant)).end_reason == EndReason.FRAME_TOO_BIG


async def test_client_that_stops_reading_is_dropped_and_server_memory_stays_bounded(
    server, tenant, connect_key, fake_openai
):
    fake_openai.upstream_kwargs = {"deltas": 400, "delta_bytes": 24_000}  # 400 x 0.5 s of audio, 12.8 MB
    client = await asyncio.to_thread(RawClient, server.port, connect_key.plaintext)
    assert client.status == 101
    await asyncio.sleep(0.2)
    client.send_text('{"type":"response.create"}')  # and never read again
    peak = 0
    async with asyncio.timeout(10):
        while True:
            peak = max(peak, *server.write_buffers(), 0)
            rows = await db(lambda: list(RealtimeSession.objects.filter(tenant=tenant)))()
            if rows and rows[0].status == RealtimeSession.Status.ENDED:
                break
            await asyncio.sleep(0.02)
    row = rows[0]
    assert row.end_reason == EndReason.CLIENT_TOO_SLOW
    assert row.close_code == CLOSE_CLIENT_TOO_SLOW
    assert peak <= 2 * 1024 * 1024  # the server's buffer for this client never grew past ~2 MiB
    assert fake_openai.sockets[0].closed_with is not None  # upstream let go too
    assert await db(quota_used)(tenant=tenant, metric=Metric.SESSIONS) == 0
    # and the server dropped the connection rather than keep it (and its buffer) for TCP to time out
    async with asyncio.timeout(10):
        while server.write_buffers():
            await asyncio.sleep(0.05)
    client.close()


@pytest.mark.quick_pings
async def test_peer_that_vanished_is_found_by_ping(server, tenant, connect_key, fake_openai):
    client = await asyncio.to_thread(RawClient, server.port, connect_key.plaintext)
    assert client.status == 101
    # it never answers pings (nor reads): within ping interval + timeout the server gives up on it
    row = await wait_ended(tenant, timeout=5)
    assert row.end_reason == EndReason.CLIENT_GONE
    assert await db(quota_used)(tenant=tenant, metric=Metric.SESSIONS) == 0
    client.close()


async def test_server_shutdown_closes_sessions_with_1012(server, tenant, connect_key, fake_openai):
    async with connect(
        url(server), additional_headers={"Authorization": f"Bearer {connect_key.plaintext}"}
    ) as ws:
        await ws.recv()
        if isinstance(server, DaphneThread):
            await asyncio.to_thread(server.kill_all_applications)
        else:
            await asyncio.to_thread(server.stop)
        await ws.wait_closed()
    assert ws.close_code == CLOSE_SERVER_RESTART
    row = await wait_ended(tenant)
    assert row.end_reason == EndReason.SERVER_SHUTDOWN
    assert await db(quota_used)(tenant=tenant, metric=Metric.SESSIONS) == 0
