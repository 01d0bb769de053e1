"""Retention: purge usage events past each tenant's `usage_retention_days`, and quota counters
(and alert records) of periods long over. Audit rows are not touched here: the audit app owns
their retention.

Purging and rollups agree on one horizon per tenant (UsageRollupState.purged_before, always the
start of a local day): events before it are deleted, and rollup buckets before it are final,
because they could no longer be recomputed. An hour still marked for rollup is never purged
before it has been rolled up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from tenants.models import Tenant
from usage.models import QuotaAlert, QuotaCounter, UsageEvent, UsageRollupPending, UsageRollupState
from usage.rollups import local_midnight, zone_of
from usage.services import DAILY, MONTHLY

logger = logging.getLogger(__name__)

PURGE_BATCH = 10_000


def retention_horizon(*, now: datetime, retention_days: int, time_zone: str) -> datetime:
    """Start of the tenant-local day `retention_days` before now: events before it are purged."""
    zone = zone_of(time_zone)
    return local_midnight((now - timedelta(days=retention_days)).astimezone(zone).date(), zone)


def usage_events_purge(
    *,
    now: datetime | None = None,
    batch_size: int = PURGE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete each tenant's usage events older than its retention horizon, in batches (each its
    own short transaction). Idempotent: a second run finds nothing left to delete."""
    now = now or timezone.now()
    pending = dict(
        UsageRollupPending.objects.values("tenant_id")
        .annotate(first=Min("hour_start"))
        .values_list("tenant_id", "first")
    )
    total = 0
    tenants = Tenant.objects.order_by("id").values_list("id", "usage_retention_days", "time_zone")
    for tenant_id, retention_days, time_zone in tenants.iterator(chunk_size=1000):
        horizon = retention_horizon(now=now, retention_days=retention_days, time_zone=time_zone)
        if tenant_id in pending:  # never purge an hour that has not been rolled up yet
            zone = zone_of(time_zone)
            horizon = min(horizon, local_midnight(pending[tenant_id].astimezone(zone).date(), zone))
        total += _purge_tenant(tenant_id, time_zone, horizon, batch_size, progress)
    if total:
        logger.info("usage events purged count=%s", total)
    return total


def _purge_tenant(
    tenant_id: int, time_zone: str, horizon: datetime, batch_size: int, progress: Callable[[int], None] | None
) -> int:
    with transaction.atomic():
        state = UsageRollupState.objects.select_for_update().filter(tenant_id=tenant_id).first()
        if state is None:
            state = UsageRollupState.objects.create(tenant_id=tenant_id, time_zone=time_zone)
        if state.purged_before is None or state.purged_before < horizon:
            state.purged_before = horizon  # before any delete: rollups must stop recomputing there first
            state.save(update_fields=["purged_before"])
    old = UsageEvent.objects.filter(tenant_id=tenant_id, occurred_at__lt=horizon)
    total = 0
    while True:
        with transaction.atomic():
            deleted, _ = UsageEvent.objects.filter(pk__in=old.values("pk")[:batch_size]).delete()
        total += deleted
        if progress is not None and deleted:
            progress(deleted)
        if deleted < batch_size:
            return total


def quota_counters_purge(*, now: datetime | None = None) -> int:
    """Delete counters (and alert records) of periods that ended more than
    QUOTA_COUNTER_RETENTION_DAYS ago. The concurrency counter (no period) is never deleted, and a
    current period's row is never old enough to match, so enforcement is unaffected."""
    now = now or timezone.now()
    keep = timedelta(days=settings.QUOTA_COUNTER_RETENTION_DAYS)
    daily_cutoff = now - keep - timedelta(days=1)  # a day's row is in use for one day after its start
    monthly_cutoff = now - keep - timedelta(days=31)
    with transaction.atomic():
        counters, _ = QuotaCounter.objects.filter(metric__in=DAILY, period_start__lt=daily_cutoff).delete()
        monthly, _ = QuotaCounter.objects.filter(metric__in=MONTHLY, period_start__lt=monthly_cutoff).delete()
        QuotaAlert.objects.filter(period_end__lt=now - keep).delete()
    total = counters + monthly
    if total:
        logger.info("old quota counters purged count=%s", total)
    return total
