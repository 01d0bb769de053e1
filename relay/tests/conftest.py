"""Fixtures for relay tests: a fake OpenAI behind the relay, relay tokens made the way issuance
makes them (CONTRACTS §3), and a WebSocket client for the real ASGI application."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from conftest import make_key
from relay.tests.fakes import FakeConnector
from tenants import keys
from tenants.models import Scope
from tokens.models import ClientSecret

db = database_sync_to_async
_sockets: list[WebsocketCommunicator] = []


@pytest.fixture(autouse=True)
async def _stop_applications() -> Any:
    """Stop every relay application a test left running before the database is flushed (as a
    server stopping would), so no session writes into the next test."""
    yield
    running = [ws.future for ws in _sockets if not ws.future.done()]
    _sockets.clear()
    for future in running:
        future.cancel()
    if running:
        await asyncio.wait(running, timeout=10)
    await database_sync_to_async(connections.close_all)()  # the worker thread's, before the test DB goes


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> FakeConnector:
    """The relay's upstream is a scripted fake (the only thing faked): every session gets its own."""
    connector = FakeConnector()
    monkeypatch.setattr("relay.services.upstream_connector_for", lambda tenant: connector)
    return connector


@pytest.fixture
def fast_relay(settings: Any) -> Any:
    settings.RELAY_HEARTBEAT_SECONDS = 0.2
    settings.RELAY_SLOW_CLIENT_SECONDS = 0.5
    settings.RELAY_MAX_EVENT_BYTES = 64 * 1024
    settings.RELAY_MAX_FRAME_BYTES = 128 * 1024
    return settings


@pytest.fixture
def connect_key(tenant: Any) -> Any:
    return make_key(tenant, name="connect only", scopes=[Scope.REALTIME_CONNECT])


def make_relay_token(tenant: Any, api_key: Any, **fields: Any) -> tuple[str, ClientSecret]:
    """A relay token and its row, as issuance stores it: fingerprint and last four, never the token."""
    generated = keys.generate(keys.KeyType.RELAY_TOKEN)
    values: dict[str, Any] = {
        "tenant": tenant,
        "api_key": api_key,
        "kind": ClientSecret.Kind.RELAY,
        "fingerprint": generated.fingerprint,
        "lookup_prefix": generated.prefix,
        "last_four": generated.last_four,
        "model": "gpt-realtime",
        "session_config": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Token instructions.",
        },
        "single_use": True,
        "max_session_seconds": None,
        "cost_ceiling_usd": None,
        "expires_at": timezone.now() + timedelta(seconds=60),
        "status": ClientSecret.Status.ACTIVE,
    }
    values.update(fields)
    if isinstance(values["cost_ceiling_usd"], str):
        values["cost_ceiling_usd"] = Decimal(values["cost_ceiling_usd"])
    return generated.plaintext, ClientSecret.objects.create(**values)


def client(
    credential: str | None = None,
    *,
    model: str | None = "gpt-realtime",
    subprotocols: list[str] | None = None,
    denial_extension: bool = True,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> WebsocketCommunicator:
    """A WebSocket client of the whole ASGI application (routing included), as the SDK connects:
    `GET /v1/realtime?model=…` with `Authorization: Bearer …`."""
    from realtime_platform.asgi import application

    path = "/v1/realtime" + (f"?model={model}" if model else "")
    all_headers = list(headers or [])
    if credential is not None:
        all_headers.append((b"authorization", f"Bearer {credential}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=all_headers, subprotocols=subprotocols)
    communicator.scope["client"] = ["203.0.113.7", 50000]
    _sockets.append(communicator)
    if denial_extension:
        communicator.scope["extensions"] = {"websocket.http.response": {}}
    return communicator


async def handshake(communicator: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    """What the server answered the handshake with: accept, close, or an HTTP denial."""
    await communicator.send_input({"type": "websocket.connect"})
    first = await communicator.receive_output(timeout)
    if first["type"] == "websocket.http.response.start":
        body = await communicator.receive_output(timeout)
        return {
            "type": "denied",
            "status": first["status"],
            "headers": dict(first["headers"]),
            "body": body["body"],
        }
    return first


async def next_event(communicator: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout)


async def events_until(
    communicator: WebsocketCommunicator, done: Callable[[dict[str, Any]], bool], timeout: float = 3
) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = await communicator.receive_output(timeout)
        if message["type"] == "websocket.close":
            seen.append({"type": "<close>", "code": message.get("code")})
            return seen
        event = json.loads(message["text"])
        seen.append(event)
        if done(event):
            return seen


async def closing(
    communicator: WebsocketCommunicator, timeout: float = 3
) -> tuple[list[dict[str, Any]], int]:
    """Read until the server closes: (the events before, the close code)."""
    events = await events_until(communicator, lambda e: False, timeout)
    assert events[-1]["type"] == "<close>", events
    return events[:-1], events[-1]["code"]
