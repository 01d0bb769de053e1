"""A redis-server of the test's own, on a free loopback port, that the test stops and restarts.

The shared Redis (127.0.0.1:6379) is never touched: "Redis went away" is this process being
killed. It keeps nothing on disk (`--save "" --appendonly no`), so a restart comes back empty,
exactly like a Redis that lost its memory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

BINARY = "redis-server"


def redis_server_or_skip() -> str:
    """The redis-server binary. Missing locally: the test is skipped; with RTP_REQUIRE_SERVICES=1
    (CI) a missing binary is a failure, so these cells can never silently stop running there."""
    path = shutil.which(BINARY)
    if path is None:
        if os.environ.get("RTP_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not installed, and RTP_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip("needs the redis-server binary (apt-get install redis-server)")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisProcess:
    """`start()`, `stop()` (SIGKILL: no goodbye to clients), `start()` again on the same port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="rtp-faults-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.workdir,
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
