"""Terminating a live session from the console, end to end: a real WebSocket client holds a
session relayed by the platform (daphne, the whole ASGI app) to the built-in OpenAI emulator; an
admin opens Live sessions, clicks Terminate, confirms, and the client's socket is closed by the
relay with the kill switch's close code and error event. The close order travels over Redis, the
channel layer production uses (the in-memory layer is not safe across the test's thread and the
server's reactor thread). It runs on PostgreSQL and Redis, as CI runs it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import websockets
from playwright.sync_api import expect
from websockets.sync.client import connect

from audit.models import AuditEvent
from conftest import make_key
from relay.core import CLOSE_TERMINATED, EndReason
from relay.models import RealtimeSession
from relay.tests.test_sdk_e2e import relay_tasks_left
from tenants.models import Scope

# PostgreSQL too: the console's requests and the relay write the same session rows from different
# server threads at once, which SQLite's shared in-memory test database refuses ("table is locked").
pytestmark = [
    pytest.mark.browser,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]


class RelayedClient(threading.Thread):
    """A client app holding one relayed session open until the server closes it."""

    def __init__(self, url: str, credential: str) -> None:
        super().__init__(daemon=True)
        self.url, self.credential = url, credential
        self.opened = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url, additional_headers={"Authorization": f"Bearer {self.credential}"}) as ws:
                while True:
                    event = json.loads(ws.recv(timeout=30))
                    self.events.append(event)
                    if event["type"] == "session.created":
                        self.opened.set()
        except websockets.ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.opened.set()


def wait_for_relay_to_finish(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while relay_tasks_left():
        assert time.monotonic() < deadline, "the relayed session did not end"
        time.sleep(0.05)


def test_terminate_a_live_session(asgi_console_as, live_console_asgi, emulator, admin_user, tenant):
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    assert isinstance(get_channel_layer(), RedisChannelLayer)
    key = make_key(tenant, name="kiosk", scopes=[Scope.REALTIME_CONNECT])
    console_page = asgi_console_as(admin_user)
    client = RelayedClient(f"{live_console_asgi.ws_url}/v1/realtime?model=gpt-realtime", key.plaintext)
    client.start()
    try:
        assert client.opened.wait(10)
        assert client.error is None, client.error
        assert client.events[0]["type"] == "session.created"

        page = console_page.page
        console_page.goto(f"/console/{tenant.slug}/")
        page.get_by_role("navigation", name="Console sections").get_by_role(
            "link", name="Live sessions"
        ).click()
        rows = page.get_by_role("table", name="Live sessions, newest first").locator("tbody tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("kiosk")
        expect(rows.first.get_by_text("Live")).to_be_visible()
        expect(page.get_by_text("1 live session now.")).to_be_visible()
        console_page.screenshot("sessions")
        console_page.assert_accessible()

        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        rows.first.get_by_role("button", name="Terminate").click()  # confirm() is accepted
        expect(page.get_by_role("status").filter(has_text="is being ended")).to_be_visible()
        assert len(dialogs) == 1
        assert "cut off at once" in dialogs[0]

        client.join(10)
        assert not client.is_alive(), "the relay did not close the client's socket"
        assert client.close_code == CLOSE_TERMINATED
        error = client.events[-1]
        assert error["type"] == "error"
        assert error["error"]["code"] == "session_terminated"
        assert "terminated by an administrator" in error["error"]["message"]
    finally:
        client.join(10)
    wait_for_relay_to_finish()

    page.reload()
    expect(page.get_by_text("No live session now.")).to_be_visible()
    page.get_by_role("form", name="Filter").get_by_label("Status").select_option("all")
    page.get_by_role("form", name="Filter").get_by_role("button", name="Apply filter").click()
    ended = page.get_by_role("table").locator("tbody tr")
    expect(ended).to_have_count(1)
    expect(ended.first).to_contain_text("Ended")
    expect(ended.first).to_contain_text(EndReason.TERMINATED)
    console_page.assert_accessible()
    console_page.assert_no_errors()

    session = RealtimeSession.objects.get(tenant=tenant)
    assert (session.status, session.end_reason) == (RealtimeSession.Status.ENDED, EndReason.TERMINATED)
    assert session.close_code == CLOSE_TERMINATED
    terminated = AuditEvent.objects.get(tenant=tenant, action="session.terminated")
    assert (terminated.actor_label, terminated.target_id) == ("alan", session.pk)
