"""A built-in emulator of the OpenAI Realtime API: a test double of an external service.

It stands in for api.openai.com when the platform has no OPENAI_API_KEY (mounted into the
platform's own ASGI app under settings.UPSTREAM_EMULATOR_PREFIX), in tests (`upstream.testing`)
and on its own (`manage.py run_emulator`). It never stands in for the platform's own logic.
"""

from __future__ import annotations

import threading
from typing import Any

from upstream.emulator.app import Emulator, Receive, Scope, Send
from upstream.emulator.faults import FaultPlan, HttpFault, SocketFault
from upstream.emulator.state import EmulatorConfig

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "EmulatorMount",
    "FaultPlan",
    "HttpFault",
    "SocketFault",
    "embedded_emulator",
]

_embedded: Emulator | None = None
_embedded_lock = threading.Lock()


def embedded_emulator() -> Emulator:
    """The process-wide emulator mounted into the platform (accepts settings.UPSTREAM_EMULATOR_API_KEY)."""
    global _embedded
    from django.conf import settings

    with _embedded_lock:
        if _embedded is None:
            _embedded = Emulator(api_keys={settings.UPSTREAM_EMULATOR_API_KEY})
        return _embedded


class EmulatorMount:
    """ASGI middleware: HTTP and WebSocket requests under `prefix` go to the emulator while
    settings.UPSTREAM_EMULATOR is on; everything else (and everything when it is off) goes to `app`."""

    def __init__(self, app: Any, *, prefix: str, emulator: Emulator | None = None) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self._emulator = emulator

    @property
    def emulator(self) -> Emulator:
        return self._emulator or embedded_emulator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from django.conf import settings

        path = str(scope.get("path", ""))
        if (
            scope["type"] in ("http", "websocket")
            and settings.UPSTREAM_EMULATOR
            and (path == self.prefix or path.startswith(self.prefix + "/"))
        ):
            root_path = str(scope.get("root_path", "") or "") + self.prefix
            await self.emulator({**scope, "root_path": root_path}, receive, send)
            return
        await self.app(scope, receive, send)
