"""The live-server fixtures other areas build on: they serve, they point settings at the emulator,
and they clean up after themselves."""

from __future__ import annotations

import threading

import httpx
import pytest
from django.conf import settings
from websockets.sync.client import connect

from upstream.testing import ReactorThread, ServerThread


def test_emulator_fixture_points_settings_at_itself(emulator):
    assert emulator.base_url == settings.OPENAI_BASE_URL
    assert settings.UPSTREAM_EMULATOR is True
    response = httpx.post(
        f"{emulator.base_url}/realtime/client_secrets",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        json={"session": {"type": "realtime"}},
    )
    assert response.status_code == 200
    assert response.json()["value"].startswith("ek_")
    assert emulator.requests[-1].json() == {"session": {"type": "realtime"}}


def test_emulator_fixture_serves_the_realtime_socket(emulator):
    with connect(
        f"{emulator.ws_url}?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {emulator.api_key}"},
    ) as ws:
        first = ws.recv()
    assert '"type":"session.created"' in first
    assert emulator.wait_for_connection().sent[0] == first


def test_each_test_gets_a_fresh_emulator(emulator):
    assert emulator.requests == []
    assert emulator.faults.pending == (0, 0)


def test_server_thread_stops_listening_and_closes_open_sockets(emulator):
    server = ServerThread(emulator.emulator).start()
    url = f"{server.ws_url}/v1/realtime?model=gpt-realtime"
    ws = connect(url, additional_headers={"Authorization": f"Bearer {emulator.api_key}"})
    ws.recv()
    server.stop()
    with pytest.raises(Exception):  # noqa: B017  (closed by the server: any close error)
        ws.recv(timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{server.http_url}/v1/realtime/client_secrets", timeout=2)


def test_one_reactor_thread_serves_every_server(emulator):
    before = {t.name for t in threading.enumerate()}
    with ServerThread(emulator.emulator) as second:
        assert second.port not in (0, emulator.server.port)
    after = {t.name for t in threading.enumerate()}
    assert [name for name in after if name == "daphne-reactor"] == ["daphne-reactor"]
    assert after <= before | {"daphne-reactor"}
    assert ReactorThread._thread is not None


def test_live_server_serves_the_platform_and_the_emulator_mount(live_server_asgi):
    health = httpx.get(f"{live_server_asgi.http_url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["checks"]["upstream"]["mode"] == "emulator"
    minted = httpx.post(
        f"{live_server_asgi.http_url}{settings.UPSTREAM_EMULATOR_PREFIX}/v1/realtime/client_secrets",
        headers={"Authorization": f"Bearer {settings.UPSTREAM_EMULATOR_API_KEY}"},
        json={},
        timeout=10,
    )
    assert minted.status_code == 200
    assert minted.json()["session"]["object"] == "realtime.session"


def test_a_sync_view_can_call_the_emulator_mounted_in_its_own_process(live_server_asgi, settings):
    """The embedded run: daphne serves both the platform and the emulator; a sync view calls the
    emulator over HTTP from its worker thread while the emulator answers on the event loop."""
    settings.ROOT_URLCONF = "upstream.tests.urls"
    settings.OPENAI_BASE_URL = f"{live_server_asgi.http_url}{settings.UPSTREAM_EMULATOR_PREFIX}/v1"
    for _ in range(3):
        response = httpx.get(f"{live_server_asgi.http_url}/probe/mint", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == {"prefix": "ek_", "model": "gpt-realtime"}


def test_emulator_mount_is_off_when_a_real_key_is_configured(live_server_asgi, settings):
    settings.UPSTREAM_EMULATOR = False
    response = httpx.post(
        f"{live_server_asgi.http_url}{settings.UPSTREAM_EMULATOR_PREFIX}/v1/realtime/client_secrets",
        headers={"Authorization": f"Bearer {settings.UPSTREAM_EMULATOR_API_KEY}"},
        json={},
        timeout=10,
    )
    assert response.status_code == 404


def test_the_sdk_talks_to_the_emulator_mounted_in_the_platform(live_server_asgi, settings):
    """`make run`'s topology: the official SDK against /_emulator/v1 of the platform's own server."""
    from openai import OpenAI

    client = OpenAI(
        base_url=f"{live_server_asgi.http_url}{settings.UPSTREAM_EMULATOR_PREFIX}/v1",
        api_key=settings.UPSTREAM_EMULATOR_API_KEY,
    )
    secret = client.realtime.client_secrets.create(
        session={"type": "realtime", "output_modalities": ["text"]}
    )
    browser = OpenAI(
        base_url=f"{live_server_asgi.http_url}{settings.UPSTREAM_EMULATOR_PREFIX}/v1", api_key=secret.value
    )
    with browser.realtime.connect(model="gpt-realtime") as connection:
        connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "over the mount"}],
            }
        )
        connection.response.create()
        for event in connection:
            if event.type == "response.done":
                break
    assert event.response.output[0].content[0].text == "You said: over the mount"
