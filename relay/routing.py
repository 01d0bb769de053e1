"""WebSocket routes (the relay consumer for /v1/realtime)."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
