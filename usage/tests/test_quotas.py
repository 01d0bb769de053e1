from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from django.db import connection

from conftest import make_key
from realtime_platform.errors import QuotaExceeded
from tenants.services import quota_override_update
from usage.models import Metric, QuotaCounter
from usage.services import period_start, quota_release, quota_reserve, quota_used


def set_limit(tenant, **values):
    from audit.actors import Actor

    quota_override_update(tenant=tenant, actor=Actor.system("tests"), values=values)


@pytest.mark.django_db
def test_reserve_until_the_limit_then_refuse_without_taking_anything(tenant):
    set_limit(tenant, secrets_per_day=3)
    for _ in range(3):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS)
    with pytest.raises(QuotaExceeded) as excinfo:
        quota_reserve(tenant=tenant, metric=Metric.SECRETS)
    assert excinfo.value.status == 429
    assert excinfo.value.code == "insufficient_quota"
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 3


@pytest.mark.django_db
def test_release_gives_the_reservation_back(tenant):
    set_limit(tenant, secrets_per_day=1)
    reservation = quota_reserve(tenant=tenant, metric=Metric.SECRETS)
    quota_release(reservation=reservation)
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 0
    quota_reserve(tenant=tenant, metric=Metric.SECRETS)  # the slot is free again


@pytest.mark.django_db
def test_key_sub_limit_is_enforced_and_a_refusal_leaves_the_tenant_counter_untouched(tenant):
    set_limit(tenant, secrets_per_day=10)
    limited = make_key(tenant, name="kiosk", secrets_per_day=2).api_key
    for _ in range(2):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS, api_key=limited)
    with pytest.raises(QuotaExceeded) as excinfo:
        quota_reserve(tenant=tenant, metric=Metric.SECRETS, api_key=limited)
    assert "this API key" in excinfo.value.message
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 2  # the failed attempt rolled back
    quota_reserve(tenant=tenant, metric=Metric.SECRETS)  # other keys still have tenant allowance


@pytest.mark.django_db
def test_a_new_day_is_a_new_counter_with_no_reset_step(tenant):
    set_limit(tenant, secrets_per_day=1)
    day_one = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    day_two = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
    quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=day_one)
    with pytest.raises(QuotaExceeded):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=day_one)
    quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=day_two)
    assert QuotaCounter.objects.filter(tenant=tenant, metric=Metric.SECRETS).count() == 2


def test_periods_are_utc_days_and_months():
    moment = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)
    assert period_start(Metric.SECRETS, moment) == datetime(2026, 2, 28, tzinfo=UTC)
    assert period_start(Metric.TOKENS, moment) == datetime(2026, 2, 1, tzinfo=UTC)
    assert period_start(Metric.SESSIONS, moment).year == 2000  # concurrency has no period


@pytest.mark.django_db
def test_unlimited_metrics_still_count(tenant):
    set_limit(tenant)  # no override
    tenant.plan.secrets_per_day = None
    tenant.plan.save()
    for _ in range(5):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS)
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 5


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_exceed_the_limit(tenant):
    """48 threads race 20 reservations each against a limit of 500 on one hot row: exactly 500
    succeed, and the counter says 500 (a read-check-write version overspends here)."""
    limit, threads, attempts = 500, 48, 20
    set_limit(tenant, secrets_per_day=limit)
    granted = []
    refused = []
    barrier = threading.Barrier(threads)

    def worker():
        ok = no = 0
        barrier.wait()
        try:
            for _ in range(attempts):
                try:
                    quota_reserve(tenant=tenant, metric=Metric.SECRETS)
                    ok += 1
                except QuotaExceeded:
                    no += 1
        finally:
            connection.close()
        granted.append(ok)
        refused.append(no)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sum(granted) == limit
    assert sum(refused) == threads * attempts - limit
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == limit
