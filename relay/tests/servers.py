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


class DaphneThread:
    """daphne (the project's named server) on the test process's shared reactor (upstream.testing),
    with the relay's WebSocket options."""

    name = "daphne"

    def __init__(self) -> None:
        self._thread: Any = None
        self.port = 0

    def start(self) -> DaphneThread:
        from realtime_platform.asgi import application
        from upstream.testing import ServerThread

        limit = settings.RELAY_SERVER_MAX_MESSAGE_BYTES
        self._thread = ServerThread(
            application,
            websocket_max_message_size=limit,
            websocket_max_frame_size=limit,
            ping_interval=settings.RELAY_PING_INTERVAL,
            ping_timeout=settings.RELAY_PING_TIMEOUT,
        ).start()
        self.port = self._thread.port
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def kill_all_applications(self) -> None:
        """What daphne's `Server.kill_all_applications` does when it shuts down: cancel every
        application, its socket still open. (Copied rather than called: daphne's own version
        raises KeyError for an HTTP connection upgraded less than a second ago.)"""
        from upstream.testing import ReactorThread

        def kill() -> None:
            for details in list(self._thread._server.connections.values()):
                instance = details.get("application_instance")
                if instance is not None and not instance.done():
                    instance.cancel()

        ReactorThread.call(kill)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def write_buffers(self) -> list[int]:
        """Bytes waiting in twisted's write buffer of each open connection."""
        sizes = []
        for protocol in list(self._thread._server.connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None and hasattr(transport, "dataBuffer"):
                sizes.append(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
        return sizes
