from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from audit.actors import Actor
from conftest import make_key
from realtime_platform.errors import BadRequest
from tenants.models import ApiKey
from tenants.services import quota_override_update
from usage.models import Metric
from usage.rollups import usage_rollup_run
from usage.selectors import (
    quota_status,
    usage_breakdown,
    usage_daily_series,
    usage_hourly_series,
    usage_local_today,
)
from usage.services import quota_reserve
from usage.tests.helpers import record


def at(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.django_db
def test_daily_series_is_per_local_day_and_zero_filled(tenant, other_tenant):
    tenant.time_zone = "America/New_York"
    tenant.save()
    record(tenant, at(2026, 3, 8, 6), input_text=1)  # 01:00 EST on the 8th (a 23-hour day)
    record(tenant, at(2026, 3, 9, 3, 30), input_text=2)  # 23:30 EDT, still the 8th
    record(tenant, at(2026, 3, 10, 12), input_text=4, audio_in_ms=90_000)
    record(other_tenant, at(2026, 3, 8, 12), input_text=1000)
    usage_rollup_run()

    (series,) = usage_daily_series(tenant=tenant, first_day=date(2026, 3, 7), last_day=date(2026, 3, 10))

    assert [p.label for p in series.points] == ["2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    assert [p.totals.input_text_tokens for p in series.points] == [0, 3, 0, 4]
    assert series.points[1].start == at(2026, 3, 8, 5)
    assert series.points[2].start == at(2026, 3, 9, 4)
    assert series.points[3].totals.audio_minutes == Decimal("1.50")
    assert series.totals.responses == 3
    assert series.totals.total_tokens == 3 * 10 + 7  # each response has 10 output audio tokens


@pytest.mark.django_db
def test_series_per_key_and_model_and_breakdown(tenant):
    web = make_key(tenant, name="web").api_key
    kiosk = make_key(tenant, name="kiosk").api_key
    record(tenant, at(2026, 3, 2, 10), api_key=web, input_text=1000)
    record(tenant, at(2026, 3, 2, 11), api_key=kiosk, model="gpt-realtime-mini", input_text=10)
    record(tenant, at(2026, 3, 3, 11), api_key=kiosk, model="gpt-realtime-mini", input_text=20)
    record(tenant, at(2026, 3, 3, 12), input_text=5)  # no key
    usage_rollup_run()
    first, last = date(2026, 3, 2), date(2026, 3, 3)

    by_key = usage_daily_series(tenant=tenant, first_day=first, last_day=last, group_by="api_key")
    assert [(s.label, [p.totals.input_text_tokens for p in s.points]) for s in by_key] == [
        ("web", [1000, 0]),
        ("no key", [0, 5]),
        ("kiosk", [10, 20]),
    ]
    by_model = usage_breakdown(tenant=tenant, first_day=first, last_day=last, by="model")
    assert [(row.label, row.totals.input_text_tokens) for row in by_model] == [
        ("gpt-realtime", 1005),
        ("gpt-realtime-mini", 30),
    ]
    only_kiosk = usage_daily_series(tenant=tenant, first_day=first, last_day=last, api_key_id=kiosk.pk)
    assert only_kiosk[0].totals.input_text_tokens == 30

    ApiKey.objects.filter(pk=kiosk.pk).delete()  # history stays, labelled
    labels = {
        s.label for s in usage_daily_series(tenant=tenant, first_day=first, last_day=last, group_by="api_key")
    }
    assert "deleted key" in labels


@pytest.mark.django_db
def test_another_tenants_key_shows_nothing(tenant, other_tenant):
    theirs = make_key(other_tenant, name="theirs").api_key
    record(other_tenant, at(2026, 3, 2, 10), api_key=theirs, input_text=1000)
    usage_rollup_run()
    (series,) = usage_daily_series(
        tenant=tenant, first_day=date(2026, 3, 2), last_day=date(2026, 3, 2), api_key_id=theirs.pk
    )
    assert series.totals.input_text_tokens == 0


@pytest.mark.django_db
def test_hourly_series_in_a_half_hour_zone(tenant):
    tenant.time_zone = "Asia/Kolkata"
    tenant.save()
    record(tenant, at(2026, 3, 1, 18, 20), input_text=1)
    record(tenant, at(2026, 3, 1, 18, 40), input_text=2)
    usage_rollup_run()
    (series,) = usage_hourly_series(tenant=tenant, since=at(2026, 3, 1, 17, 0), until=at(2026, 3, 1, 20, 0))
    assert [(p.label, p.totals.input_text_tokens) for p in series.points] == [
        ("2026-03-01 22:00", 0),
        ("2026-03-01 23:00", 1),
        ("2026-03-02 00:00", 2),
        ("2026-03-02 01:00", 0),
    ]


@pytest.mark.django_db
def test_bad_ranges_are_refused(tenant):
    with pytest.raises(BadRequest) as excinfo:
        usage_daily_series(tenant=tenant, first_day=date(2026, 3, 2), last_day=date(2026, 3, 1))
    assert excinfo.value.param == "last_day"
    with pytest.raises(BadRequest):
        usage_daily_series(tenant=tenant, first_day=date(2024, 1, 1), last_day=date(2026, 1, 1))
    with pytest.raises(BadRequest):
        usage_hourly_series(tenant=tenant, since=at(2026, 3, 1), until=at(2026, 3, 1))
    with pytest.raises(BadRequest):
        usage_hourly_series(tenant=tenant, since=at(2026, 1, 1), until=at(2026, 3, 1))


@pytest.mark.django_db
def test_quota_status_against_limits(tenant, other_tenant):
    quota_override_update(
        tenant=tenant,
        actor=Actor.system("tests"),
        values={
            "tokens_per_month": 1000,
            "cost_usd_per_month": Decimal("10.00"),
            "audio_minutes_per_month": 60,
        },
    )
    now = at(2026, 3, 10, 12)
    quota_reserve(tenant=tenant, metric=Metric.TOKENS, amount=250, now=now)
    quota_reserve(tenant=tenant, metric=Metric.COST_MICROUSD, amount=2_500_000, now=now)
    quota_reserve(tenant=tenant, metric=Metric.AUDIO_MS, amount=90_000, now=now)
    quota_reserve(tenant=tenant, metric=Metric.SESSIONS, now=now)
    quota_reserve(tenant=other_tenant, metric=Metric.TOKENS, amount=999, now=now)

    status = {s.name: s for s in quota_status(tenant=tenant, now=now)}

    tokens = status["tokens_per_month"]
    assert (tokens.used, tokens.limit, tokens.percent) == (250, 1000, 25.0)
    assert (tokens.period_start, tokens.period_end) == (at(2026, 3, 1), at(2026, 4, 1))
    assert (status["cost_usd_per_month"].used, status["cost_usd_per_month"].percent) == (
        Decimal("2.50"),
        25.0,
    )
    assert status["audio_minutes_per_month"].used == Decimal("1.50")
    assert status["audio_minutes_per_month"].unit == "minutes"
    sessions = status["concurrent_sessions"]
    assert (sessions.used, sessions.period_start, sessions.period_end) == (1, None, None)
    assert status["secrets_per_day"].period_start == at(2026, 3, 10)
    assert usage_local_today(tenant=tenant, now=at(2026, 3, 10, 23, 30)) == date(2026, 3, 10)
