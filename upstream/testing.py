"""Live servers for tests: the OpenAI emulator and the whole platform, served by daphne in-process.

Registered for the whole suite by the root conftest (`pytest_plugins = ["upstream.testing"]`):

- `emulator`: a live emulator (HTTP + WebSocket) on an ephemeral port, with settings pointed at it
  (`OPENAI_BASE_URL`, emulator mode on). See `EmulatorServer` for what a test can do with it.
- `live_server_asgi`: the platform's whole ASGI app (Django + Channels, emulator mount included)
  on an ephemeral port, for end-to-end tests with the official `openai` SDK:
  `OpenAI(base_url=f"{live_server_asgi.http_url}/v1", api_key=...)`. Uses `transactional_db`.

Both run on daphne, the server the platform runs on, inside this process: Twisted's reactor can
start only once per process, so one reactor thread serves every test server of the session and is
stopped when the session ends; each fixture adds its own listener and removes it (closing its
connections and cancelling its application instances) at teardown. Running in-process means the
servers share the test's database (SQLite in memory included) and settings overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from upstream.client import UpstreamClient
from upstream.emulator import Emulator, EmulatorConfig
from upstream.emulator.faults import FaultPlan
from upstream.emulator.state import EmulatorState, RecordedConnection, RecordedRequest

T = TypeVar("T")

STARTUP_TIMEOUT = 10.0


class ReactorThread:
    """The process's Twisted reactor (daphne's asyncio reactor), running in a daemon thread."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls) -> None:
        from twisted.logger import STDLibLogObserver, globalLogBeginner

        reactor = _reactor()

        with cls._lock:
            if cls._thread is not None and cls._thread.is_alive():
                return
            if getattr(reactor, "_startedBefore", False):
                raise RuntimeError("The Twisted reactor already ran in this process and cannot restart.")
            observer: Any = STDLibLogObserver("twisted")
            globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
            ready = threading.Event()
            reactor.callWhenRunning(ready.set)

            def run() -> None:
                asyncio.set_event_loop(reactor._asyncioEventloop)
                reactor.run(installSignalHandlers=False)

            cls._thread = threading.Thread(target=run, name="daphne-reactor", daemon=True)
            cls._thread.start()
            if not ready.wait(STARTUP_TIMEOUT):
                raise RuntimeError("The Twisted reactor did not start.")

    @classmethod
    def call(cls, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` in the reactor thread and wait for it (and for the Deferred it may return)."""
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(_reactor(), fn, *args)

    @classmethod
    def stop(cls) -> None:
        reactor = _reactor()
        with cls._lock:
            if cls._thread is None:
                return
            reactor.callFromThread(reactor.stop)
            cls._thread.join(timeout=STARTUP_TIMEOUT)
            cls._thread = None


def _reactor() -> Any:
    """Twisted's global reactor (daphne's asyncio reactor, installed by importing daphne.server)."""
    import daphne.server  # noqa: F401  (installs the asyncio reactor before anything else can)
    from twisted.internet import reactor

    return reactor


class ServerThread:
    """One daphne listener on 127.0.0.1:<ephemeral port> serving `application` on the shared reactor."""

    def __init__(
        self,
        application: Any,
        *,
        websocket_max_message_size: int = 1024 * 1024,
        websocket_max_frame_size: int = 1024 * 1024,
        **server_options: Any,
    ) -> None:
        """`server_options`: other daphne `Server` arguments (e.g. `ping_interval`, `ping_timeout`)."""
        self.application = application
        self.websocket_max_message_size = websocket_max_message_size
        self.websocket_max_frame_size = websocket_max_frame_size
        self.server_options = server_options
        self.host = "127.0.0.1"
        self.port = 0
        self._server: Any = None

    def start(self) -> ServerThread:
        ReactorThread.ensure_running()
        self._server = _make_listening_server(
            self.application,
            websocket_max_message_size=self.websocket_max_message_size,
            websocket_max_frame_size=self.websocket_max_frame_size,
            **self.server_options,
        )
        self.port = ReactorThread.call(self._server.listen, self.host)
        return self

    def stop(self) -> None:
        if self._server is not None:
            ReactorThread.call(self._server.shutdown)
            self._server = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_listening_server(application: Any, **options: Any) -> Any:
    """A daphne `Server` that listens on the already-running reactor and can be shut down alone."""
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory
    from twisted.internet import defer

    reactor = _reactor()

    class ListeningServer(Server):  # type: ignore[misc]
        _stopped = False
        _port: Any = None

        def listen(self, host: str) -> int:
            self.connections: dict[Any, dict[str, Any]] = {}
            self.http_factory = HTTPFactory(self)
            self.ws_factory = WebSocketFactory(self, server=self.server_name)
            self.ws_factory.setProtocolOptions(
                autoPingTimeout=self.ping_timeout,
                allowNullOrigin=True,
                openHandshakeTimeout=self.websocket_handshake_timeout,
                maxMessagePayloadSize=self.websocket_max_message_size,
                maxFramePayloadSize=self.websocket_max_frame_size,
            )
            reactor.callLater(1, self.application_checker)
            reactor.callLater(2, self.timeout_checker)
            self._port = reactor.listenTCP(0, self.http_factory, interface=host)
            return int(self._port.getHost().port)

        def application_checker(self) -> None:
            if not self._stopped:
                super().application_checker()

        def timeout_checker(self) -> None:
            if not self._stopped:
                super().timeout_checker()

        def shutdown(self) -> Any:
            self._stopped = True
            stopped = self._port.stopListening() if self._port is not None else None
            instances = []
            for protocol, details in list(self.connections.items()):
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abortConnection()
                instance = details.get("application_instance")
                if instance is not None and not instance.done():
                    instance.cancel()
                    instances.append(instance)
            waits = [defer.Deferred.fromFuture(asyncio.gather(*instances, return_exceptions=True))]
            if stopped is not None:
                waits.append(stopped)
            return defer.gatherResults(waits, consumeErrors=True)

    return ListeningServer(
        application,
        endpoints=["tcp:0"],  # unused: listen() picks the port; Server() insists on an endpoint
        signal_handlers=False,
        verbosity=0,
        **options,
    )


# --- the emulator fixture ---------------------------------------------------------------------


@dataclass
class EmulatorServer:
    """A live emulator for one test.

    - `base_url` (".../v1"), `http_url`, `ws_url` (".../v1/realtime"), `api_key` (a key it accepts:
      settings.UPSTREAM_EMULATOR_API_KEY, so `upstream_client_for(tenant)` reaches it unchanged);
    - `faults` (`upstream.emulator.faults.FaultPlan`), each applying to the next request/socket:
      `faults.next_http(status=429, retry_after=1, times=1)`, `faults.next_http(503)`,
      `faults.slow(seconds)`, `faults.malformed_body()`, `faults.drop_socket_after(n_events)`,
      `faults.malformed_frame_after(n_events)`, `faults.reject_socket()`, `faults.slow_socket(delay)`;
      per request instead: header `X-Emulator-Fault: status=503; retry_after=2` or query
      `emulator_fault=drop_after=3`;
    - `config` (`EmulatorConfig`): `max_session_seconds`, `realtime_factor`, `timer_scale`, …;
    - what happened: `requests` (REST, with JSON bodies), `connections` (sockets: `received`
      client frames and `sent` server frames exactly as on the wire, `received_events()`,
      `sent_events()`, `close_code`, `closed`), `secrets` (the `ek_` secrets minted);
    - `add_api_key(key)` to accept another key (a tenant's own key, say);
    - `client(**kwargs)`: an `UpstreamClient` aimed at it.
    """

    emulator: Emulator
    server: ServerThread
    api_key: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def base_url(self) -> str:
        return f"{self.server.http_url}/v1"

    @property
    def ws_url(self) -> str:
        return f"{self.server.ws_url}/v1/realtime"

    @property
    def faults(self) -> FaultPlan:
        return self.emulator.faults

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.emulator.state.requests)

    @property
    def connections(self) -> list[RecordedConnection]:
        return list(self.emulator.state.connections)

    @property
    def secrets(self) -> list[Any]:
        return self.emulator.state.minted

    def add_api_key(self, key: str) -> None:
        self.emulator.add_api_key(key)

    def client(self, **kwargs: Any) -> UpstreamClient:
        options: dict[str, Any] = {"api_key": self.api_key, "base_url": self.base_url, "backoff_base": 0.01}
        options.update(kwargs)
        return UpstreamClient(**options)

    def wait_for_connection(self, index: int = -1, timeout: float = 5.0) -> RecordedConnection:
        """The recorded connection once the emulator has finished with it."""
        connection = self.connections[index]
        connection.closed.wait(timeout)
        return connection


def start_emulator(api_key: str, *, config: EmulatorConfig | None = None) -> EmulatorServer:
    emulator = Emulator(api_keys={api_key}, config=config or EmulatorConfig(record=True))
    server = ServerThread(
        emulator, websocket_max_message_size=32 * 1024 * 1024, websocket_max_frame_size=32 * 1024 * 1024
    ).start()
    return EmulatorServer(emulator=emulator, server=server, api_key=api_key)


@pytest.fixture(scope="session")
def _daphne_reactor() -> Iterator[None]:
    yield
    ReactorThread.stop()


@pytest.fixture
def emulator(settings: Any, _daphne_reactor: None) -> Iterator[EmulatorServer]:
    """A live OpenAI emulator for this test, with settings pointed at it (see `EmulatorServer`)."""
    live = start_emulator(settings.UPSTREAM_EMULATOR_API_KEY)
    settings.OPENAI_API_KEY = ""
    settings.UPSTREAM_EMULATOR = True
    settings.OPENAI_BASE_URL = live.base_url
    try:
        yield live
    finally:
        live.server.stop()


# --- the whole platform -----------------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer:
    host: str
    port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


@pytest.fixture
def live_server_asgi(transactional_db: Any, _daphne_reactor: None) -> Iterator[LiveServer]:
    """The platform's ASGI application (HTTP + WebSocket, emulator mount included) on daphne."""
    from django.db import connections

    from realtime_platform.asgi import application

    server = ServerThread(application).start()
    try:
        yield LiveServer(host=server.host, port=server.port)
    finally:
        server.stop()
        # views ran in daphne's worker threads; drop any connections they left open so the test
        # database can be flushed and, at the end, dropped
        with contextlib.suppress(Exception):
            connections.close_all()
        from tokens.asgi import shutdown_db_threads

        shutdown_db_threads()  # the issuance fast path's database threads, and their connections
