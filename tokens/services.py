"""Writes of client secrets."""

from __future__ import annotations

import logging
from datetime import datetime

from django.utils import timezone

from tokens.models import ClientSecret

logger = logging.getLogger(__name__)


def client_secret_expire_sweep(*, now: datetime | None = None) -> int:
    """Mark every active secret past its expiry as expired: one set-based UPDATE, safe to run
    twice or concurrently (the second run matches no rows)."""
    now = now or timezone.now()
    count = ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now).update(
        status=ClientSecret.Status.EXPIRED
    )
    if count:
        logger.info("expired client secrets count=%s", count)
    return count
