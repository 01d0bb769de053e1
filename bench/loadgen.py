"""A tiny HTTP/1.1 keep-alive load generator on raw asyncio streams.

Generic clients (httpx, aiohttp) spend more CPU per request than the server under test does on
this 2-core machine, which would make the measurement about the client. This one writes a
prebuilt request and parses only the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def throughput(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile(self, pct: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
        return ordered[index]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def run(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    total: int,
    concurrency: int,
    expect: int = 200,
    deadline: float | None = None,
    rate: float | None = None,
) -> Result:
    """Send `total` requests over `concurrency` keep-alive connections; `make_request(i)` builds
    request i (so each can carry its own body or headers). With `deadline` (time.monotonic()),
    clients stop starting requests then, however many are left (the soak runs for a time). With
    `rate` (requests per second, all clients together), request i starts no earlier than i / rate
    seconds after the run began: an open-loop load below saturation."""
    result = Result()
    counter = iter(range(total))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in counter:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if rate is not None:
                    await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
                request = make_request(i)
                start = time.perf_counter()
                writer.write(request)
                status, body = await _read_response(reader)
                elapsed = time.perf_counter() - start
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == expect:
                    result.latencies.append(elapsed)
                elif result.statuses[status] == 1:
                    print(f"    unexpected {status}: {body[:300]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result
