"""WebSocket routes: the relay consumer for /v1/realtime (what `client.realtime.connect()` dials)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from relay.consumers import RelayConsumer

websocket_urlpatterns: list[Any] = [
    path("v1/realtime", RelayConsumer.as_asgi()),
]
