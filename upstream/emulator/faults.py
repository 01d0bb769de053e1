"""Fault injection: make the emulator fail the way upstream fails, on demand.

Two ways to ask for a fault, with the same vocabulary:

- in process, through `Emulator.faults` (thread-safe; tests run the emulator in another thread):
  `faults.next_http(status=429, retry_after=1)`, `faults.slow(2.0)`, `faults.drop_socket_after(5)`,
  `faults.malformed_frame_after(3)`, `faults.reject_socket()`, `faults.slow_socket(0.05)`;
  each applies to the next `times` requests or connections, in order;
- per request or connection, from the wire: an `X-Emulator-Fault` header or an `emulator_fault`
  query parameter holding `key=value` pairs separated by `;` or `&`, e.g.
  `X-Emulator-Fault: status=503; retry_after=2` or `wss://…/v1/realtime?model=…&emulator_fault=drop_after%3D4`.

Keys: `status`, `retry_after` (seconds, may be fractional), `retry_after_ms`, `code`, `message`,
`type`, `slow` (seconds before answering), `body=malformed` (HTTP 200 with a broken JSON body);
for sockets `reject`, `drop_after`, `drop_code`, `malformed_after`, `event_delay`, `accept_delay`.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class HttpFault:
    status: int | None = None  # answer with this status instead of doing the work
    retry_after: float | None = None  # Retry-After header (seconds)
    retry_after_ms: int | None = None  # retry-after-ms header
    code: str | None = None
    message: str | None = None
    type: str | None = None
    delay: float = 0.0  # sleep this long before answering (a slow upstream)
    malformed_body: bool = False  # 200 with a body that is not valid JSON


@dataclass(frozen=True)
class SocketFault:
    reject: bool = False  # refuse the handshake (HTTP 403 where the server cannot send 4xx bodies)
    accept_delay: float = 0.0  # sleep before accepting the handshake
    drop_after: int | None = None  # close mid-stream after sending this many server events
    drop_code: int = 1011  # close code used for the drop (1011: server error)
    malformed_after: int | None = None  # after this many events, send one frame that is not JSON
    event_delay: float = 0.0  # sleep before every server event (a slow stream)


class FaultPlan:
    """Queued faults, consumed in order by the next requests/connections. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: deque[HttpFault] = deque()
        self._socket: deque[SocketFault] = deque()

    # --- REST ---------------------------------------------------------------------------------

    def next_http(
        self,
        status: int = 500,
        *,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        code: str | None = None,
        message: str | None = None,
        type: str | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """The next `times` REST requests fail with `status` (OpenAI-shaped error body)."""
        self.add_http(
            HttpFault(
                status=status,
                retry_after=retry_after,
                retry_after_ms=retry_after_ms,
                code=code,
                message=message,
                type=type,
                delay=delay,
            ),
            times=times,
        )

    def slow(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` REST requests are answered (normally) after `seconds`."""
        self.add_http(HttpFault(delay=seconds), times=times)

    def malformed_body(self, *, times: int = 1) -> None:
        """The next `times` REST requests get HTTP 200 with a body that is not JSON."""
        self.add_http(HttpFault(malformed_body=True), times=times)

    def add_http(self, fault: HttpFault, *, times: int = 1) -> None:
        with self._lock:
            self._http.extend([fault] * times)

    def take_http(self) -> HttpFault | None:
        with self._lock:
            return self._http.popleft() if self._http else None

    # --- WebSocket ----------------------------------------------------------------------------

    def drop_socket_after(self, n_events: int, *, code: int = 1011, times: int = 1) -> None:
        """The next `times` sockets are closed (with `code`) after `n_events` server events."""
        self.add_socket(SocketFault(drop_after=n_events, drop_code=code), times=times)

    def malformed_frame_after(self, n_events: int, *, times: int = 1) -> None:
        """The next `times` sockets send one non-JSON text frame after `n_events` server events."""
        self.add_socket(SocketFault(malformed_after=n_events), times=times)

    def reject_socket(self, *, times: int = 1) -> None:
        """The next `times` socket handshakes are refused."""
        self.add_socket(SocketFault(reject=True), times=times)

    def slow_socket(self, event_delay: float, *, accept_delay: float = 0.0, times: int = 1) -> None:
        """The next `times` sockets wait `accept_delay` before accepting, `event_delay` per event."""
        self.add_socket(SocketFault(event_delay=event_delay, accept_delay=accept_delay), times=times)

    def add_socket(self, fault: SocketFault, *, times: int = 1) -> None:
        with self._lock:
            self._socket.extend([fault] * times)

    def take_socket(self) -> SocketFault | None:
        with self._lock:
            return self._socket.popleft() if self._socket else None

    def clear(self) -> None:
        with self._lock:
            self._http.clear()
            self._socket.clear()

    @property
    def pending(self) -> tuple[int, int]:
        """(queued REST faults, queued socket faults)."""
        with self._lock:
            return len(self._http), len(self._socket)


def parse_fault_spec(spec: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in spec.replace("&", ";").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            pairs[name.strip().lower()] = unquote(value.strip())
    return pairs


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def http_fault_from_spec(spec: str) -> HttpFault | None:
    pairs = parse_fault_spec(spec)
    if not pairs:
        return None
    return HttpFault(
        status=_int(pairs.get("status")),
        retry_after=_float(pairs.get("retry_after")),
        retry_after_ms=_int(pairs.get("retry_after_ms")),
        code=pairs.get("code"),
        message=pairs.get("message"),
        type=pairs.get("type"),
        delay=_float(pairs.get("slow")) or 0.0,
        malformed_body=pairs.get("body") == "malformed",
    )


def socket_fault_from_spec(spec: str) -> SocketFault | None:
    pairs = parse_fault_spec(spec)
    if not pairs:
        return None
    return SocketFault(
        reject="reject" in pairs and pairs["reject"] not in ("0", "false"),
        accept_delay=_float(pairs.get("accept_delay")) or _float(pairs.get("slow")) or 0.0,
        drop_after=_int(pairs.get("drop_after")),
        drop_code=_int(pairs.get("drop_code")) or 1011,
        malformed_after=_int(pairs.get("malformed_after")),
        event_delay=_float(pairs.get("event_delay")) or 0.0,
    )
