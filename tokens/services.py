"""Writes of client secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from tokens.models import ClientSecret

logger = logging.getLogger(__name__)

EXPIRE_BATCH = 50_000


def client_secret_expire_due(*, now: datetime | None = None) -> int:
    """How many active secrets are past their expiry (for progress bars)."""
    now = now or timezone.now()
    return ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now).count()


def client_secret_expire_sweep(
    *,
    now: datetime | None = None,
    batch_size: int = EXPIRE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Mark every active secret past its expiry as expired. Set-based: one conditional UPDATE per
    batch of up to `batch_size` rows (picked through the status/expiry index), each its own short
    transaction, so a million expired secrets never hold a million row locks at once and a
    concurrent revocation waits at most one batch. Safe to run twice or concurrently: the
    `status = active` condition is re-checked on every row, so a row is expired once.

    Expiry is not audited row by row: it follows from `expires_at`, which the audit trail already
    has from `secret.issued`. Redemption checks `expires_at` itself, so correctness never waits
    for this sweep; it keeps `status` truthful for listings and the console."""
    now = now or timezone.now()
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
            break
    if total:
        logger.info("expired client secrets count=%s", total)
    return total
