from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from usage.models import Metric, QuotaAlert, QuotaCounter, UsageEvent, UsageRollup, UsageRollupState
from usage.retention import quota_counters_purge, retention_horizon, usage_events_purge
from usage.rollups import usage_rollup_run
from usage.services import NO_PERIOD, quota_release, quota_reserve, quota_used
from usage.tests.helpers import record, rollup_totals

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def at(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.django_db
def test_events_past_each_tenants_retention_are_purged(tenant, other_tenant):
    tenant.usage_retention_days = 30
    tenant.time_zone = "America/New_York"
    tenant.save()
    other_tenant.usage_retention_days = 400
    other_tenant.save()
    # Horizon for tenant: local midnight of 2026-05-16 in New York = 04:00Z.
    old = record(tenant, at(2026, 5, 16, 3, 59))
    kept = record(tenant, at(2026, 5, 16, 4, 0))
    other = record(other_tenant, at(2026, 1, 1))
    usage_rollup_run()
    batches = []

    assert usage_events_purge(now=NOW, batch_size=1, progress=batches.append) == 1

    assert not UsageEvent.objects.filter(pk=old.pk).exists()
    assert UsageEvent.objects.filter(pk__in=[kept.pk, other.pk]).count() == 2
    assert UsageRollupState.objects.get(tenant=tenant).purged_before == at(2026, 5, 16, 4)
    assert rollup_totals(tenant, UsageRollup.Granularity.DAY)["tokens"] == 200  # history outlives the ledger
    assert usage_events_purge(now=NOW) == 0  # idempotent


@pytest.mark.django_db
def test_an_hour_not_yet_rolled_up_is_kept_until_it_is(tenant):
    tenant.usage_retention_days = 1
    tenant.save()
    record(tenant, at(2026, 6, 1, 10))  # marked pending, never rolled up
    assert usage_events_purge(now=NOW) == 0
    usage_rollup_run()
    assert usage_events_purge(now=NOW) == 1
    assert rollup_totals(tenant, UsageRollup.Granularity.DAY)["tokens"] == 100


def test_horizon_is_a_local_midnight():
    assert retention_horizon(now=NOW, retention_days=1, time_zone="Asia/Kolkata") == at(2026, 6, 13, 18, 30)
    assert retention_horizon(now=NOW, retention_days=400, time_zone="UTC") == at(2025, 5, 11)


@pytest.mark.django_db
def test_old_quota_counters_go_and_live_ones_stay(tenant, settings):
    settings.QUOTA_COUNTER_RETENTION_DAYS = 90
    for metric, start in [
        (Metric.SECRETS, at(2026, 3, 16)),  # ended 2026-03-17: 90 days before NOW is 2026-03-17 12:00
        (Metric.SECRETS, at(2026, 3, 17)),
        (Metric.TOKENS, at(2026, 2, 1)),  # ended 2026-03-01: gone
        (Metric.TOKENS, at(2026, 3, 1)),  # ended 2026-04-01: kept
        (Metric.TOKENS, at(2026, 6, 1)),  # current
        (Metric.SESSIONS, NO_PERIOD),  # concurrency: never
    ]:
        QuotaCounter.objects.create(tenant=tenant, metric=metric, period_start=start, used=1)
    QuotaAlert.objects.create(
        tenant=tenant,
        metric=Metric.TOKENS,
        period_start=at(2026, 2, 1),
        period_end=at(2026, 3, 1),
        threshold=50,
        used=1,
        limit=2,
    )

    assert quota_counters_purge(now=NOW) == 2

    left = sorted(QuotaCounter.objects.values_list("metric", "period_start"))
    assert left == sorted(
        [
            (Metric.SECRETS, at(2026, 3, 17)),
            (Metric.TOKENS, at(2026, 3, 1)),
            (Metric.TOKENS, at(2026, 6, 1)),
            (Metric.SESSIONS, NO_PERIOD),
        ]
    )
    assert not QuotaAlert.objects.exists()


@pytest.mark.django_db
def test_a_release_after_midnight_goes_back_to_the_day_it_came_from(tenant, system_actor):
    """No reset step, no gap: yesterday's reservation, released today, cannot add to today's
    allowance, and today's counter starts from zero on its first debit."""
    from tenants.services import quota_override_update

    quota_override_update(tenant=tenant, actor=system_actor, values={"secrets_per_day": 2})
    before = at(2026, 6, 14, 23, 59, 59, 999999)
    after = at(2026, 6, 15, 0, 0, 0)
    quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=before)
    late = quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=before)
    quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=after)
    quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=after)

    quota_release(reservation=late)

    assert quota_used(tenant=tenant, metric=Metric.SECRETS, now=before) == 1
    assert quota_used(tenant=tenant, metric=Metric.SECRETS, now=after) == 2
    with pytest.raises(Exception, match="limit of 2"):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=after + timedelta(seconds=1))
