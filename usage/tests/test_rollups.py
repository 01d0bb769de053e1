from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from conftest import make_key
from usage.models import UsageEvent, UsageRollup, UsageRollupPending, UsageRollupState
from usage.rollups import (
    bucket_floor,
    hour_shift_minutes,
    usage_rollup_backfill,
    usage_rollup_backfill_plan,
    usage_rollup_run,
)
from usage.tests.helpers import ledger_totals, record, rollup_rows, rollup_totals, same_money

HOUR = UsageRollup.Granularity.HOUR
DAY = UsageRollup.Granularity.DAY


def at(*args):
    return datetime(*args, tzinfo=UTC)


def set_zone(tenant, zone):
    tenant.time_zone = zone
    tenant.save(update_fields=["time_zone"])


@pytest.mark.django_db
def test_rollup_sums_per_hour_day_key_and_model(tenant):
    web = make_key(tenant, name="web").api_key
    kiosk = make_key(tenant, name="kiosk").api_key
    record(tenant, at(2026, 3, 2, 10, 5), api_key=web, input_text=100)
    record(tenant, at(2026, 3, 2, 10, 55), api_key=web, input_text=50)
    record(tenant, at(2026, 3, 2, 10, 30), api_key=kiosk, model="gpt-realtime-mini", input_text=7)
    record(tenant, at(2026, 3, 2, 11, 0), api_key=web, input_text=1)  # next hour, same day
    record(tenant, at(2026, 3, 2, 10, 6), api_key=web, kind=UsageEvent.Kind.SECRET_ISSUED, charge=False)
    record(tenant, at(2026, 3, 2, 10, 7), api_key=web, kind=UsageEvent.Kind.SESSION_ENDED, audio_in_ms=90_000)

    stats = usage_rollup_run()

    assert stats.hours_claimed == 2
    hours = {(r.bucket_start, r.api_key_id, r.model): r for r in UsageRollup.objects.filter(granularity=HOUR)}
    ten = hours[(at(2026, 3, 2, 10), web.pk, "gpt-realtime")]
    assert (ten.responses, ten.input_text_tokens, ten.output_audio_tokens) == (2, 150, 20)
    assert (ten.secrets, ten.sessions, ten.audio_in_ms) == (1, 1, 90_000)
    assert hours[(at(2026, 3, 2, 10), kiosk.pk, "gpt-realtime-mini")].input_text_tokens == 7
    assert hours[(at(2026, 3, 2, 11), web.pk, "gpt-realtime")].input_text_tokens == 1
    days = {(r.api_key_id, r.model): r for r in UsageRollup.objects.filter(granularity=DAY)}
    assert set(days) == {(web.pk, "gpt-realtime"), (kiosk.pk, "gpt-realtime-mini")}
    assert days[(web.pk, "gpt-realtime")].bucket_start == at(2026, 3, 2)
    assert days[(web.pk, "gpt-realtime")].input_text_tokens == 151
    assert same_money(rollup_totals(tenant, DAY)["cost"], ledger_totals(tenant)["cost"])
    assert same_money(rollup_totals(tenant, HOUR)["cost"], ledger_totals(tenant)["cost"])
    assert not UsageRollupPending.objects.exists()


@pytest.mark.django_db
def test_running_again_changes_nothing_and_a_late_event_is_added_once(tenant):
    record(tenant, at(2026, 3, 2, 10, 5), input_text=100)
    usage_rollup_run()
    first = rollup_rows(tenant, HOUR), rollup_rows(tenant, DAY)

    assert usage_rollup_run().hours_claimed == 0
    assert (rollup_rows(tenant, HOUR), rollup_rows(tenant, DAY)) == first

    record(tenant, at(2026, 3, 2, 10, 50), input_text=5)  # lands in an hour already rolled up
    usage_rollup_run()
    usage_rollup_run()
    assert rollup_totals(tenant, HOUR)["tokens"] == 105
    assert rollup_totals(tenant, DAY)["tokens"] == 105
    assert UsageRollup.objects.filter(tenant=tenant).count() == 2


@pytest.mark.django_db
def test_tenants_never_share_buckets(tenant, other_tenant):
    record(tenant, at(2026, 3, 2, 10, 5), input_text=100)
    record(other_tenant, at(2026, 3, 2, 10, 5), input_text=3)
    usage_rollup_run()
    assert rollup_totals(tenant, DAY)["tokens"] == 100
    assert rollup_totals(other_tenant, DAY)["tokens"] == 3


@pytest.mark.django_db
def test_utc_day_and_month_boundaries(tenant):
    record(tenant, at(2026, 1, 31, 23, 59, 59), input_text=1)
    record(tenant, at(2026, 2, 1, 0, 0, 0), input_text=2)
    usage_rollup_run()
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [(at(2026, 1, 31), 1), (at(2026, 2, 1), 2)]


@pytest.mark.django_db
def test_a_local_day_is_a_day_of_the_tenants_zone(tenant):
    """New York in summer: local midnight is 04:00 UTC, so 03:59Z and 04:01Z are different days."""
    set_zone(tenant, "America/New_York")
    record(tenant, at(2026, 6, 10, 3, 59), input_text=1)
    record(tenant, at(2026, 6, 10, 4, 1), input_text=2)
    usage_rollup_run()
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [(at(2026, 6, 9, 4), 1), (at(2026, 6, 10, 4), 2)]


@pytest.mark.django_db
def test_dst_days_are_23_and_25_hours_long(tenant):
    """2026-03-08 in New York starts at 05:00Z (EST) and ends at 04:00Z (EDT): 23 hours."""
    set_zone(tenant, "America/New_York")
    record(tenant, at(2026, 3, 8, 5, 0), input_text=1)  # first instant of the short day
    record(tenant, at(2026, 3, 9, 3, 59), input_text=2)  # 23:59 EDT: still the 8th
    record(tenant, at(2026, 3, 9, 4, 0), input_text=4)  # 00:00 EDT on the 9th
    record(tenant, at(2026, 11, 1, 4, 0), input_text=8)  # 2026-11-01 00:00 EDT: a 25-hour day
    record(tenant, at(2026, 11, 2, 4, 59), input_text=16)  # 23:59 EST on the 1st
    usage_rollup_run()
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [
        (at(2026, 3, 8, 5), 3),
        (at(2026, 3, 9, 4), 4),
        (at(2026, 11, 1, 4), 24),
    ]


@pytest.mark.django_db
def test_half_hour_zones_get_local_hours_and_days(tenant):
    """Kolkata is UTC+5:30: its hours start at :30 UTC and its days at 18:30 UTC, so two events
    in the same UTC hour can fall on different local days."""
    set_zone(tenant, "Asia/Kolkata")
    record(tenant, at(2026, 3, 1, 18, 20), input_text=1)  # 23:50 IST on the 1st
    record(tenant, at(2026, 3, 1, 18, 40), input_text=2)  # 00:10 IST on the 2nd
    usage_rollup_run()
    hours = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, HOUR)]
    assert hours == [(at(2026, 3, 1, 17, 30), 1), (at(2026, 3, 1, 18, 30), 2)]
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [(at(2026, 2, 28, 18, 30), 1), (at(2026, 3, 1, 18, 30), 2)]

    record(tenant, at(2026, 3, 1, 18, 25), input_text=4)  # a late event in the same UTC hour
    usage_rollup_run()
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [(at(2026, 2, 28, 18, 30), 5), (at(2026, 3, 1, 18, 30), 2)]


def test_hour_alignment_of_odd_zones():
    assert hour_shift_minutes("UTC") == 0
    assert hour_shift_minutes("Europe/Paris") == 0
    assert hour_shift_minutes("Asia/Kolkata") == 30
    assert hour_shift_minutes("Asia/Kathmandu") == 45
    assert hour_shift_minutes("America/St_Johns") == 30  # UTC-3:30
    assert hour_shift_minutes("Not/AZone") == 0  # unknown zones roll up in UTC
    assert bucket_floor(at(2026, 1, 1, 10, 10), 45) == at(2026, 1, 1, 9, 45)


@pytest.mark.django_db
def test_changing_the_time_zone_rebuckets_history(tenant):
    record(tenant, at(2026, 6, 10, 2, 0), input_text=1)
    record(tenant, at(2026, 6, 10, 6, 0), input_text=2)
    usage_rollup_run()
    assert [r[0] for r in rollup_rows(tenant, DAY)] == [at(2026, 6, 10)]

    set_zone(tenant, "America/New_York")
    stats = usage_rollup_run(now=timezone.now() + timedelta(hours=1))  # one run, whatever its clock

    assert stats.tenants_rebuilt == 1
    days = [(start, tokens) for start, _, _, _, tokens, _ in rollup_rows(tenant, DAY)]
    assert days == [(at(2026, 6, 9, 4), 1), (at(2026, 6, 10, 4), 2)]
    assert UsageRollupState.objects.get(tenant=tenant).time_zone == "America/New_York"
    assert rollup_totals(tenant, HOUR)["tokens"] == 3


@pytest.mark.django_db
def test_backfill_recomputes_buckets_from_the_ledger(tenant, other_tenant):
    record(tenant, at(2026, 3, 1, 10), input_text=1)
    record(tenant, at(2026, 3, 5, 10), input_text=2)
    record(other_tenant, at(2026, 3, 5, 12), input_text=4)
    usage_rollup_run()
    UsageRollup.objects.filter(tenant=tenant).update(input_text_tokens=999)  # damage
    UsageRollup.objects.create(tenant=tenant, granularity=HOUR, bucket_start=at(2026, 3, 3, 1), responses=5)

    since, until = at(2026, 3, 1), at(2026, 3, 10)
    plan = usage_rollup_backfill_plan(since=since, until=until, tenant_ids=[tenant.pk], slab_days=2)
    steps = []
    usage_rollup_backfill(plan=plan, since=since, until=until, progress=steps.append)

    assert len(steps) == plan.steps
    assert rollup_totals(tenant, HOUR)["tokens"] == 3
    assert rollup_totals(tenant, DAY)["tokens"] == 3
    assert not UsageRollup.objects.filter(tenant=tenant, bucket_start=at(2026, 3, 3, 1)).exists()
    assert rollup_totals(other_tenant, DAY)["tokens"] == 4  # not in the plan, untouched


@pytest.mark.django_db
def test_hours_before_the_purge_horizon_are_never_recomputed(tenant):
    record(tenant, at(2026, 3, 1, 10), input_text=5)
    usage_rollup_run()
    UsageRollupState.objects.filter(tenant=tenant).update(purged_before=at(2026, 3, 2))
    UsageEvent.objects.filter(tenant=tenant).delete()  # what the purge did

    record(tenant, at(2026, 3, 1, 11), input_text=1)  # a replay older than the horizon
    stats = usage_rollup_run()
    since = at(2026, 2, 20)
    usage_rollup_backfill(plan=usage_rollup_backfill_plan(since=since, until=at(2026, 3, 3)), since=since)

    assert stats.skipped_purged == 1
    assert rollup_totals(tenant, DAY)["tokens"] == 5  # the pre-purge rollup survives both


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_beside_live_traffic_never_double_count(tenant):
    """Eight writers record events into the same few hours while three rollup loops run at once:
    afterwards the rollups equal the ledger exactly."""
    set_zone(tenant, "Asia/Kolkata")  # overlapping local buckets make the race harder
    start = at(2026, 3, 1, 17, 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(40):
                record(tenant, start + timedelta(minutes=(n * 40 + i) % 180), input_text=1 + n)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    def roller() -> None:
        try:
            while not stop.is_set():
                usage_rollup_run(batch_size=2)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    rollers = [threading.Thread(target=roller) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in rollers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in rollers:
        thread.join()
    assert not errors, errors
    usage_rollup_run()  # whatever the last loop left pending

    expected = ledger_totals(tenant)
    assert expected["tokens"] == sum(40 * (1 + n) for n in range(8))
    assert rollup_totals(tenant, HOUR)["tokens"] == expected["tokens"]
    assert rollup_totals(tenant, DAY)["tokens"] == expected["tokens"]
    assert same_money(rollup_totals(tenant, DAY)["cost"], expected["cost"])
