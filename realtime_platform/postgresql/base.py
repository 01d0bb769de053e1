"""Django's PostgreSQL backend, with a pool that clears out every dead connection at the first.

With CONN_HEALTH_CHECKS the psycopg pool tests each connection as it hands it out, and when one
is dead it waits before trying the next: 1 s, 2 s, 4 s… (its guard against a busy loop). After a
PostgreSQL restart or failover *every* idle connection is dead, so a pool grown to dozens left
requests waiting through that backoff into PoolTimeout (10 s) until they had all been tried.
Here the first failed test hands the whole pool to `pool.check()` (psycopg_pool's own sweep: it
tests every idle connection, drops the dead ones and opens fresh ones) in the background, so the
waiting request gets a fresh connection on its next try, about a second later.
(Found by the fault matrix: tests/gates/test_faults.py::test_postgres_lost_between_requests.)
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from django.db.backends.postgresql import base

logger = logging.getLogger(__name__)


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool
        # `_check` is where psycopg_pool keeps the check Django gave it; should a release rename it,
        # this leaves Django's plain check in place rather than failing
        if pool is not None and getattr(pool, "_check", None) is type(pool).check_connection:
            pool._check = functools.partial(_check_or_sweep, pool, threading.Lock())
        return pool


def _check_or_sweep(pool: Any, sweeping: threading.Lock, conn: Any) -> None:
    try:
        type(pool).check_connection(conn)
    except Exception:
        if sweeping.acquire(blocking=False):  # one sweep at a time, however many requests notice
            logger.warning("dead database connection in the pool; checking all idle connections")
            threading.Thread(target=_sweep, args=(pool, sweeping), daemon=True, name="db-pool-sweep").start()
        raise


def _sweep(pool: Any, sweeping: threading.Lock) -> None:
    try:
        pool.check()
    except Exception:  # the pool is closing, or the server is still down: the next failure retries
        logger.warning("database pool sweep failed", exc_info=True)
    finally:
        sweeping.release()
