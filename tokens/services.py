"""Writes of client secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from tokens.models import ClientSecret

logger = logging.getLogger(__name__)

EXPIRE_BATCH = 50_000
# When at least this share of the table is due (a backlog after downtime), sweep it in physical
# block ranges: sequential, no index walk, no rescanning what earlier batches already did.
BLOCK_SWEEP_SHARE = 0.1

Progress = Callable[[int], None]


def client_secret_expire_due(*, now: datetime | None = None) -> int:
    """How many active secrets are past their expiry (for progress bars)."""
    now = now or timezone.now()
    return ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now).count()


def client_secret_expire_sweep(
    *,
    now: datetime | None = None,
    batch_size: int = EXPIRE_BATCH,
    progress: Progress | None = None,
) -> int:
    """Mark every active secret past its expiry as expired. Set-based: one conditional UPDATE per
    batch of up to about `batch_size` rows, each its own short transaction, so a million expired
    secrets never hold a million row locks in one transaction and a concurrent revocation waits
    at most one batch. Safe to run twice or concurrently: `status = 'active' AND expires_at <=
    now` is re-checked on every row as it is updated, so each row is expired once.

    Expiry is not audited row by row: it follows from `expires_at`, which the audit trail already
    has from `secret.issued`. Redemption checks `expires_at` itself, so correctness never waits
    for this sweep; it keeps `status` truthful for listings and the console."""
    now = now or timezone.now()
    total = 0
    if connection.vendor == "postgresql":
        total += _expire_backlog_by_blocks(now, batch_size, progress)
        total += _expire_batches_pg(now, batch_size, progress)
    else:
        total += _expire_batches(now, batch_size, progress)
    if total:
        logger.info("expired client secrets count=%s", total)
    return total


def _expire_batches(now: datetime, batch_size: int, progress: Progress | None) -> int:
    due = ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now)
    total = 0
    while True:
        with transaction.atomic():
            count = ClientSecret.objects.filter(
                pk__in=due.values("pk")[:batch_size], status=ClientSecret.Status.ACTIVE
            ).update(status=ClientSecret.Status.EXPIRED)
        total += count
        if progress is not None and count:
            progress(count)
        if count == 0:
            return total


TABLE = ClientSecret._meta.db_table
_DUE = "status = %s AND expires_at <= %s"


def _expire_batches_pg(now: datetime, batch_size: int, progress: Progress | None) -> int:
    """Batches picked through the (status, expires_at) index and updated by tuple id: a TID scan,
    whatever the planner guesses about the batch (an `id IN (subquery)` can turn into a hash join
    over the whole table)."""
    params: list[Any] = [ClientSecret.Status.ACTIVE, now]
    sql = (
        f"UPDATE {TABLE} SET status = %s WHERE ctid = ANY(ARRAY("  # noqa: S608  (constants only)
        f"SELECT ctid FROM {TABLE} WHERE {_DUE} LIMIT %s)) AND {_DUE}"
    )
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [ClientSecret.Status.EXPIRED, *params, batch_size, *params])
            count = int(cursor.rowcount)
        total += count
        if progress is not None and count:
            progress(count)
        if count == 0:
            return total


def _expire_backlog_by_blocks(now: datetime, batch_size: int, progress: Progress | None) -> int:
    """A large backlog, swept in ranges of physical blocks (TID range scans) holding about
    `batch_size` rows each. Rows a concurrent writer moved meanwhile are left to the index-driven
    batches that follow."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s) / current_setting('block_size')::int, c.reltuples, c.relpages "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            [TABLE, TABLE],
        )
        blocks, reltuples, relpages = cursor.fetchone()
        if reltuples <= 0 or relpages <= 0:
            return 0  # never analysed: no basis for sizing block ranges; the index batches will do
        threshold = max(batch_size, int(max(reltuples, 0) * BLOCK_SWEEP_SHARE))
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} WHERE {_DUE} LIMIT %s) due",  # noqa: S608
            [ClientSecret.Status.ACTIVE, now, threshold],
        )
        if cursor.fetchone()[0] < threshold:
            return 0
    rows_per_block = max(1.0, reltuples / relpages)
    step = max(1, int(batch_size / rows_per_block))
    sql = f"UPDATE {TABLE} SET status = %s WHERE ctid >= %s::tid AND ctid < %s::tid AND {_DUE}"  # noqa: S608
    total = 0
    for start in range(0, int(blocks), step):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                sql,
                [
                    ClientSecret.Status.EXPIRED,
                    f"({start},0)",
                    f"({start + step},0)",
                    ClientSecret.Status.ACTIVE,
                    now,
                ],
            )
            count = int(cursor.rowcount)
        total += count
        if progress is not None and count:
            progress(count)
    return total
