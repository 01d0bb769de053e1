"""Flow control towards the client socket, whichever ASGI server holds it.

The relay must not buffer without bound in either direction. uvicorn does the right thing on its
own: its websocket `send` waits while the socket's write buffer is above the high-water mark, and
it stops reading the socket while its receive queue holds `ws_max_queue` frames.

daphne 4.2.3 does neither: `send` returns at once and twisted buffers whatever the client does not
read (django/daphne#170), and received frames go into an unbounded queue. For daphne, `DaphneFlow`
attaches to the connection's twisted transport through twisted's own consumer/producer interface:
- registered as the transport's streaming producer, it is told when the write buffer passes
  twisted's high-water mark (64 KiB) and when it has drained, so the relay's sends wait while the
  client is not reading, as under uvicorn (and the slow-client watchdog can act);
- it pauses reading the socket while more than `backlog_limit` received frames wait for the
  relay, and resumes below half of that.
It finds the transport in the `send` callable daphne gives each application
(`functools.partial(Server.handle_reply, protocol)`); if a daphne release changes that, it logs a
warning once and the relay runs without (the watchdog and ping still end stuck sessions).

daphne (autobahn) also refuses the protocol close codes (1008, 1009, 1011-1013) from an
application's ASGI close; `DaphneFlow.close` sends those frames itself.

Both adapters can also `abort()` the connection: a client that stopped reading never takes the
close frame out of a full buffer, so after the close has had its chance the relay drops the TCP
connection instead of leaving it (and its buffer) to TCP's own timeouts. ASGI has no message for
that; `abort()` reaches the server's transport the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)
_warned = False


class ClientFlow:
    """The server applies backpressure itself (uvicorn), or nothing can be done."""

    writable = True

    async def wait_writable(self) -> None:
        return None

    def received(self) -> None:
        """Called once per received frame, before the relay handles it."""

    def detach(self) -> None:
        """The application is done with the connection."""

    def abort(self) -> bool:
        """Drop the connection now (no closing handshake). False when that is not possible here."""
        return False

    def close(self, code: int, reason: str) -> bool:
        """Send the close frame here, when the server's ASGI close cannot (True if it did)."""
        return False


class UvicornFlow(ClientFlow):
    """uvicorn already makes `send` wait and pauses reading; this only adds `abort()`."""

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def abort(self) -> bool:
        transport = getattr(self._protocol, "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            return False
        if not transport.is_closing() or transport.get_write_buffer_size():
            transport.abort()
        return True


class DaphneFlow(ClientFlow):
    def __init__(
        self, protocol: Any, transport: Any, queue: asyncio.Queue[Any] | None, backlog_limit: int
    ) -> None:
        self._protocol = protocol
        self._transport = transport
        self._queue = queue
        self._backlog_limit = backlog_limit
        self._reading_paused = False
        self._event = asyncio.Event()
        self._event.set()
        self.writable = True
        self._attached = True

    # twisted IPushProducer: the transport calls these about its write buffer.
    def pauseProducing(self) -> None:
        self.writable = False
        self._event.clear()

    def resumeProducing(self) -> None:
        self.writable = True
        self._event.set()
        if getattr(self._transport, "disconnecting", False):
            # twisted closes a disconnecting transport once its producer goes away (see
            # FileDescriptor.loseConnection); we have nothing more to write.
            self.detach()

    def stopProducing(self) -> None:
        self.writable = True  # connection lost: let pending sends through (daphne drops them)
        self._event.set()
        self._attached = False

    async def wait_writable(self) -> None:
        await self._event.wait()

    def received(self) -> None:
        queue = self._queue
        if queue is None:
            return
        backlog = queue.qsize()
        if not self._reading_paused and backlog >= self._backlog_limit:
            self._reading_paused = True
            self._transport.pauseProducing()
        elif self._reading_paused and backlog <= self._backlog_limit // 2:
            self._reading_paused = False
            self._transport.resumeProducing()

    def detach(self) -> None:
        if not self._attached:
            return
        self._attached = False
        self.writable = True
        self._event.set()
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resumeProducing()
        if getattr(self._transport, "producer", None) is self:
            self._transport.unregisterProducer()

    def close(self, code: int, reason: str) -> bool:
        """autobahn's `sendClose` (what daphne's ASGI close calls) accepts only 1000 and 3000-4999,
        for applications; the protocol codes a server may send (1008, 1009, 1011, 1012, 1013) go
        through `sendCloseFrame`, the method `sendClose` itself ends in, with the same state
        handling and closing-handshake timeout."""
        if code == 1000 or 3000 <= code <= 4999 or not hasattr(self._protocol, "sendCloseFrame"):
            return False
        self._protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)
        return True

    def abort(self) -> bool:
        self.detach()
        if hasattr(self._transport, "abortConnection"):
            self._transport.abortConnection()
            return True
        return False


def _daphne_protocol(send: Callable[..., Any]) -> Any:
    daphne_server = sys.modules.get("daphne.server")  # imported by whoever runs daphne; never by us
    if daphne_server is None or not isinstance(send, functools.partial) or not send.args:
        return None
    owner = getattr(send.func, "__self__", None)
    if getattr(send.func, "__name__", "") != "handle_reply" or not isinstance(owner, daphne_server.Server):
        return None
    return send.args[0]


def _uvicorn_protocol(send: Callable[..., Any]) -> Any:
    owner = getattr(send, "__self__", None)
    return owner if type(owner).__module__.startswith("uvicorn.protocols.websockets") else None


def flow_for(send: Callable[..., Any], receive: Callable[..., Any], *, backlog_limit: int) -> ClientFlow:
    """The flow control for this connection: DaphneFlow under daphne, UvicornFlow under uvicorn,
    the null one otherwise (tests, other servers)."""
    global _warned
    uvicorn_protocol = _uvicorn_protocol(send)
    if uvicorn_protocol is not None:
        return UvicornFlow(uvicorn_protocol)
    protocol = _daphne_protocol(send)
    if protocol is None:
        return ClientFlow()
    transport = getattr(protocol, "transport", None)
    queue = getattr(receive, "__self__", None)
    if (
        transport is None
        or not hasattr(transport, "registerProducer")
        or not isinstance(queue, asyncio.Queue)
    ):
        if not _warned:
            _warned = True
            logger.warning("daphne flow control unavailable: relay sends to slow clients will not wait")
        return ClientFlow()
    flow = DaphneFlow(protocol, transport, queue, backlog_limit)
    if getattr(transport, "producer", None) is not None:
        # daphne's HTTP channel registered itself before the upgrade and is done with the socket.
        transport.unregisterProducer()
    transport.registerProducer(flow, True)
    return flow
