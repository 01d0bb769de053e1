"""Locks that keep one periodic job from running twice at once (two beat instances, a beat entry
and an operator's command, a redelivered message beside the original).

Which lock, and why:
- REDIS_URL set: a Redis lock (redis-py `Lock`: SET NX PX with a random token, released only by
  its owner). Its TTL is longer than the task's hard time limit, so it cannot expire under a
  task that is still running, and a worker killed with -9 frees it when the TTL runs out.
- PostgreSQL without Redis: a session-level advisory lock (`pg_try_advisory_lock`). The server
  drops it when the connection closes, so a dead worker never leaves it behind.
- Otherwise (SQLite, the embedded run, one machine by definition): an exclusive `flock` on a file
  under RTP_VAR_DIR, which the kernel releases when the process exits.

Every job is also idempotent on its own (conditional UPDATEs, unique constraints, claimed rows),
so the lock saves work and noise; it is not what keeps the data right.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

T = TypeVar("T")
Backend = Literal["redis", "postgres", "file"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


def lock_backend() -> Backend:
    if settings.REDIS_URL:
        return "redis"
    if connection.vendor == "postgresql":
        return "postgres"
    return "file"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock, derived from the job name."""
    return int.from_bytes(hashlib.sha256(f"rtp-job:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def _redis_lock(name: str, ttl: float) -> Iterator[bool]:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    lock = client.lock(f"rtp:job-lock:{name}", timeout=ttl, blocking=False)
    acquired = bool(lock.acquire(blocking=False))
    try:
        yield acquired
    finally:
        if acquired:
            try:
                lock.release()
            except redis.exceptions.LockError:
                # Our TTL ran out and someone else may hold it now: theirs to release.
                logger.warning("job lock expired before release job=%s ttl=%s", name, ttl)
        client.close()


@contextmanager
def _advisory_lock(name: str) -> Iterator[bool]:
    key = advisory_key(name)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired and connection.connection is not None:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@contextmanager
def _file_lock(name: str) -> Iterator[bool]:
    folder = Path(settings.VAR_DIR) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            acquired = True
        except BlockingIOError:
            acquired = False
        try:
            yield acquired
        finally:
            if acquired:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def job_lock(name: str, *, ttl: float, backend: Backend | None = None) -> Iterator[bool]:
    """Try to take the lock named `name` without waiting; yields whether this caller holds it.
    `ttl` bounds how long a Redis lock can outlive a crashed holder."""
    if not _NAME.match(name):
        raise ValueError(f"invalid job lock name {name!r}")
    chosen = backend or lock_backend()
    if chosen == "redis":
        with _redis_lock(name, ttl) as acquired:
            yield acquired
    elif chosen == "postgres":
        with _advisory_lock(name) as acquired:
            yield acquired
    else:
        with _file_lock(name) as acquired:
            yield acquired


def run_exclusive(name: str, job: Callable[[], T], *, ttl: float) -> T | None:
    """Run `job` if no other process is running the job called `name`; None if one is."""
    with job_lock(name, ttl=ttl) as acquired:
        if not acquired:
            logger.info("job skipped: another run holds its lock job=%s", name)
            return None
        return job()
