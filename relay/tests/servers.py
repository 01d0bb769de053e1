"""A live uvicorn serving the platform's ASGI app in a thread of the test process (so it shares the
test database and settings), with the relay's WebSocket options, on an ephemeral port."""

from __future__ import annotations

import threading
import time
from typing import Any

from django.conf import settings


class UvicornThread:
    name = "uvicorn"

    def __init__(self, **overrides: Any) -> None:
        self.overrides = overrides
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> UvicornThread:
        import uvicorn

        from realtime_platform.asgi import application

        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "lifespan": "off",
            "ws_max_size": settings.RELAY_SERVER_MAX_MESSAGE_BYTES,
            "ws_max_queue": settings.RELAY_INBOUND_QUEUE,
            "ws_ping_interval": settings.RELAY_PING_INTERVAL,
            "ws_ping_timeout": settings.RELAY_PING_TIMEOUT,
            "ws_per_message_deflate": False,
            "timeout_graceful_shutdown": 5,
            "log_config": None,
            **self.overrides,
        }
        self._server = uvicorn.Server(uvicorn.Config(application, **options))
        self._thread = threading.Thread(target=self._server.run, name="uvicorn-test", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=15)
            self._server = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def write_buffers(self) -> list[int]:
        """Bytes waiting in the server's user-space write buffer of each WebSocket connection."""
        state = self._server.server_state
        return [
            c.transport.get_write_buffer_size() for c in list(state.connections) if c.transport is not None
        ]
