"""Hourly and daily usage rollups per tenant, API key and model, recomputed from the ledger.

How a run stays exact when it runs twice, concurrently, or beside live traffic:
- `usage_record` upserts a pending marker (tenant, UTC hour) in the event's own transaction.
- A run locks the affected tenants' UsageRollupState rows, claims markers (FOR UPDATE SKIP
  LOCKED, then deletes them), and in the same transaction deletes and re-inserts every bucket
  those hours touch with one set-based `INSERT … SELECT … GROUP BY` over the ledger. Recomputing
  (not incrementing) makes a rerun a no-op and a duplicate run harmless; the marker protocol
  means an event committed after the run's snapshot always leaves a marker for the next run.
- Buckets follow the tenant's time zone: an hour bucket starts where a local hour starts (at
  :30 UTC in India), a day bucket is one local day (23, 24 or 25 hours), both stored as UTC
  instants. Day rows are sums of the day's hour rows. Time-zone arithmetic happens here in
  Python (zoneinfo); the SQL only adds and truncates in UTC, so PostgreSQL and SQLite agree.
- A tenant whose time zone changed is re-bucketed: its rollups (back to its purge horizon) are
  deleted and every hour of its ledger is marked pending again.

One known approximation: in the one zone whose DST shift is 30 minutes (Australia/Lord_Howe),
hours are aligned to standard time, so during DST its day rows move half an hour of usage to the
neighbouring day. Totals are never affected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from tenants.models import Tenant
from usage.models import UsageEvent, UsageRollup, UsageRollupPending, UsageRollupState

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
EPSILON = timedelta(microseconds=1)
DEFAULT_BATCH = 10_000  # tenant-hours per transaction: bounds the transaction; a backlog takes few scans
TENANT_CHUNK = 500

Progress = Callable[[int], None]


# --- Time zones and buckets -------------------------------------------------------------------


@cache
def zone_of(name: str) -> ZoneInfo:
    """The tenant's zone; an unknown name falls back to UTC (logged) instead of stopping rollups."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("unknown time zone, using UTC zone=%r", name)
        return ZoneInfo("UTC")


@cache
def hour_shift_minutes(name: str) -> int:
    """Minutes past the UTC hour at which the zone's local hours start: the sub-hour part of its
    standard offset (0 almost everywhere, 30 in India, 45 in Nepal, 30 in Newfoundland)."""
    zone = zone_of(name)
    local = datetime(2001, 1, 1, tzinfo=UTC).astimezone(zone)
    standard = (local.utcoffset() or timedelta()) - (local.dst() or timedelta())
    return int(standard.total_seconds() // 60) % 60


def utc_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def bucket_floor(moment: datetime, shift_minutes: int) -> datetime:
    """Start (UTC) of the tenant-local hour bucket containing `moment`."""
    shift = timedelta(minutes=shift_minutes)
    return utc_hour(moment - shift) + shift


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which local `day` begins (a midnight skipped by DST resolves to the
    moment the day actually starts)."""
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def local_day_bounds(moment: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    day = moment.astimezone(zone).date()
    return local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone)


@dataclass(frozen=True)
class Span:
    tenant_id: int
    lo: datetime
    hi: datetime
    shift: int = 0  # minutes; only hour spans use it


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Merge overlapping or touching spans of the same tenant, so no event joins two spans."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.tenant_id, s.lo)):
        last = merged[-1] if merged else None
        if last is not None and last.tenant_id == span.tenant_id and span.lo <= last.hi:
            if span.hi > last.hi:
                merged[-1] = Span(last.tenant_id, last.lo, span.hi, last.shift)
        else:
            merged.append(span)
    return merged


def days_of(spans: Sequence[Span], zones: dict[int, str]) -> list[Span]:
    """Every local day that an hour span touches, as (tenant, local midnight, next midnight)."""
    days: set[Span] = set()
    for span in spans:
        zone = zone_of(zones[span.tenant_id])
        day = span.lo.astimezone(zone).date()
        last = (span.hi - EPSILON).astimezone(zone).date()
        while day <= last:
            days.add(
                Span(span.tenant_id, local_midnight(day, zone), local_midnight(day + timedelta(days=1), zone))
            )
            day += timedelta(days=1)
    return merge_days(days)


def merge_days(days: Iterable[Span]) -> list[Span]:
    return sorted(set(days), key=lambda s: (s.tenant_id, s.lo))


def spans_for_hours(markers: Iterable[tuple[int, datetime]], zones: dict[int, str]) -> list[Span]:
    """The tenant-local hour buckets overlapping each marked UTC hour, merged per tenant."""
    spans = []
    for tenant_id, hour in markers:
        shift = hour_shift_minutes(zones[tenant_id])
        lo = bucket_floor(hour, shift)
        hi = bucket_floor(hour + HOUR - EPSILON, shift) + HOUR
        spans.append(Span(tenant_id, lo, hi, shift))
    return merge_spans(spans)


# --- SQL ----------------------------------------------------------------------------------------
# The statements below are assembled from constants (table names, column lists, one of two dialect
# expressions); every value travels as a query parameter. Hence the S608 exemptions.

EVENT_SUMS = (
    ("input_text_tokens", "SUM(e.input_text_tokens)"),
    ("input_audio_tokens", "SUM(e.input_audio_tokens)"),
    ("input_image_tokens", "SUM(e.input_image_tokens)"),
    ("cached_text_tokens", "SUM(e.cached_text_tokens)"),
    ("cached_audio_tokens", "SUM(e.cached_audio_tokens)"),
    ("cached_image_tokens", "SUM(e.cached_image_tokens)"),
    ("output_text_tokens", "SUM(e.output_text_tokens)"),
    ("output_audio_tokens", "SUM(e.output_audio_tokens)"),
    ("audio_in_ms", "SUM(e.audio_in_ms)"),
    ("audio_out_ms", "SUM(e.audio_out_ms)"),
    ("cost_usd", "SUM(e.cost_usd)"),
)
ROLLUP = UsageRollup._meta.db_table
EVENT = UsageEvent._meta.db_table
PENDING = UsageRollupPending._meta.db_table


def _pg() -> bool:
    return connection.vendor == "postgresql"


def _dt(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _spans_cte(name: str, spans: Sequence[Span]) -> tuple[str, list[Any]]:
    row = "(%s::bigint, %s::timestamptz, %s::timestamptz, %s::int)" if _pg() else "(%s, %s, %s, %s)"
    params: list[Any] = []
    for span in spans:
        params += [span.tenant_id, _dt(span.lo), _dt(span.hi), span.shift]
    return f"{name}(tenant_id, lo, hi, shift) AS (VALUES {', '.join([row] * len(spans))})", params


def _hour_bucket_sql() -> str:
    if _pg():
        return (
            "date_trunc('hour', e.occurred_at - r.shift * interval '1 minute', 'UTC')"
            " + r.shift * interval '1 minute'"
        )
    return (
        "datetime(strftime('%%Y-%%m-%%d %%H:00:00', datetime(e.occurred_at, '-' || r.shift || ' minutes')),"
        " '+' || r.shift || ' minutes')"
    )


def _rowcount(cursor: Any) -> int:
    """Rows the last statement changed (SQLite's driver reports -1 for WITH … statements)."""
    if cursor.rowcount >= 0:
        return int(cursor.rowcount)
    cursor.execute("SELECT changes()")
    return int(cursor.fetchone()[0])


def _delete_buckets(granularity: str, spans: Sequence[Span]) -> int:
    cte, params = _spans_cte("r", spans)
    sql = (
        f"WITH {cte} DELETE FROM {ROLLUP} WHERE granularity = %s AND EXISTS ("  # noqa: S608
        f"SELECT 1 FROM r WHERE r.tenant_id = {ROLLUP}.tenant_id"
        f" AND {ROLLUP}.bucket_start >= r.lo AND {ROLLUP}.bucket_start < r.hi)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, granularity])
        return _rowcount(cursor)


_COLUMNS = (
    "tenant_id, api_key_id, model, granularity, bucket_start, responses, sessions, secrets, "
    + ", ".join(name for name, _ in EVENT_SUMS)
)


def _insert_hours(spans: Sequence[Span], now: datetime) -> int:
    cte, params = _spans_cte("r", spans)
    bucket = _hour_bucket_sql()
    sums = ", ".join(expr for _, expr in EVENT_SUMS)
    sql = (
        f"WITH {cte} INSERT INTO {ROLLUP} ({_COLUMNS}, computed_at) "  # noqa: S608
        f"SELECT e.tenant_id, e.api_key_id, e.model, %s, {bucket}, "
        "SUM(CASE WHEN e.kind = %s THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN e.kind = %s THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN e.kind = %s THEN 1 ELSE 0 END), "
        f"{sums}, %s "
        f"FROM {EVENT} e JOIN r ON e.tenant_id = r.tenant_id "
        "AND e.occurred_at >= r.lo AND e.occurred_at < r.hi "
        "WHERE e.occurred_at >= %s AND e.occurred_at < %s "  # lets the planner range-scan the time index
        "GROUP BY e.tenant_id, e.api_key_id, e.model, 5"
    )
    params += [
        UsageRollup.Granularity.HOUR,
        UsageEvent.Kind.RESPONSE,
        UsageEvent.Kind.SESSION_ENDED,
        UsageEvent.Kind.SECRET_ISSUED,
        _dt(now),
        _dt(min(s.lo for s in spans)),
        _dt(max(s.hi for s in spans)),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return _rowcount(cursor)


def _insert_days(days: Sequence[Span], now: datetime) -> int:
    cte, params = _spans_cte("d", days)
    fields = ("responses", "sessions", "secrets", *(name for name, _ in EVENT_SUMS))
    sums = ", ".join(f"SUM(h.{name})" for name in fields)
    sql = (
        f"WITH {cte} INSERT INTO {ROLLUP} ({_COLUMNS}, computed_at) "  # noqa: S608
        f"SELECT h.tenant_id, h.api_key_id, h.model, %s, d.lo, {sums}, %s "
        f"FROM {ROLLUP} h JOIN d ON h.tenant_id = d.tenant_id "
        "AND h.bucket_start >= d.lo AND h.bucket_start < d.hi "
        "WHERE h.granularity = %s "
        "GROUP BY h.tenant_id, h.api_key_id, h.model, d.lo"
    )
    params += [UsageRollup.Granularity.DAY, _dt(now), UsageRollup.Granularity.HOUR]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return _rowcount(cursor)


@dataclass
class RollupStats:
    hours_claimed: int = 0
    hour_rows: int = 0
    day_rows: int = 0
    tenants_rebuilt: int = 0
    skipped_purged: int = 0

    def add(self, other: RollupStats) -> None:
        for name in ("hours_claimed", "hour_rows", "day_rows", "tenants_rebuilt", "skipped_purged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _recompute(hour_spans: Sequence[Span], zones: dict[int, str], now: datetime) -> RollupStats:
    """Rewrite every hour bucket inside `hour_spans`, then every local day they touch. Runs in the
    caller's transaction, with the tenants' state rows locked."""
    stats = RollupStats()
    if not hour_spans:
        return stats
    if _pg() and settings.ROLLUP_WORK_MEM:
        # One locked worker aggregates up to a batch of tenant-hours: let its sort stay in memory
        # (this transaction only; the server default stays small for everyone else).
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.ROLLUP_WORK_MEM])
    days = days_of(hour_spans, zones)
    _delete_buckets(UsageRollup.Granularity.HOUR, hour_spans)
    stats.hour_rows = _insert_hours(hour_spans, now)
    _delete_buckets(UsageRollup.Granularity.DAY, days)
    stats.day_rows = _insert_days(days, now)
    return stats


def _lock_states(tenant_ids: Sequence[int]) -> dict[int, UsageRollupState]:
    """Lock (creating where missing) the tenants' rollup states, in id order so two runs that
    share tenants queue instead of deadlocking."""
    missing = set(tenant_ids) - set(
        UsageRollupState.objects.filter(tenant_id__in=tenant_ids).values_list("tenant_id", flat=True)
    )
    if missing:
        UsageRollupState.objects.bulk_create(
            [
                UsageRollupState(tenant_id=tid, time_zone=tz)
                for tid, tz in Tenant.objects.filter(id__in=missing).values_list("id", "time_zone")
            ],
            ignore_conflicts=True,
        )
    return {
        state.tenant_id: state
        for state in UsageRollupState.objects.select_for_update()
        .filter(tenant_id__in=tenant_ids)
        .order_by("tenant_id")
    }


# --- Marking ------------------------------------------------------------------------------------


def rollup_mark_pending(*, tenant_id: int, occurred_at: datetime) -> None:
    """Mark the UTC hour of one new event for the next rollup run. Call it in the transaction that
    writes the event: DO UPDATE holds the marker's row lock until that transaction commits."""
    UsageRollupPending.objects.bulk_create(
        [
            UsageRollupPending(
                tenant_id=tenant_id, hour_start=utc_hour(occurred_at), touched_at=timezone.now()
            )
        ],
        update_conflicts=True,
        unique_fields=["tenant", "hour_start"],
        update_fields=["touched_at"],
    )


def rollup_mark_pending_many(pairs: Iterable[tuple[int, datetime]]) -> None:
    """The same for events written in bulk (distinct hours only)."""
    now = timezone.now()
    rows = {(tenant_id, utc_hour(moment)) for tenant_id, moment in pairs}
    if rows:
        UsageRollupPending.objects.bulk_create(
            [UsageRollupPending(tenant_id=t, hour_start=h, touched_at=now) for t, h in sorted(rows)],
            update_conflicts=True,
            unique_fields=["tenant", "hour_start"],
            update_fields=["touched_at"],
        )


def _utc_hour_sql(column: str) -> str:
    if _pg():
        return f"date_trunc('hour', {column}, 'UTC')"
    return f"strftime('%%Y-%%m-%%d %%H:00:00', {column})"


# --- Runs -----------------------------------------------------------------------------------------


def _rebuild_tenant(tenant_id: int, marked_at: datetime) -> None:
    """The tenant's time zone changed: drop its rollups back to the purge horizon and mark every
    hour of its ledger pending, so the normal run re-buckets it in the new zone."""
    with transaction.atomic():
        state = UsageRollupState.objects.select_for_update().get(tenant_id=tenant_id)
        zone = Tenant.objects.filter(id=tenant_id).values_list("time_zone", flat=True).get()
        rollups = UsageRollup.objects.filter(tenant_id=tenant_id)
        events_sql = f"FROM {EVENT} WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        if state.purged_before is not None:
            rollups = rollups.filter(bucket_start__gte=state.purged_before)
            events_sql += " AND occurred_at >= %s"
            params.append(_dt(state.purged_before))
        rollups.delete()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {PENDING} (tenant_id, hour_start, touched_at) "
                f"SELECT DISTINCT tenant_id, {_utc_hour_sql('occurred_at')}, %s {events_sql} "
                "ON CONFLICT (tenant_id, hour_start) DO NOTHING",
                [_dt(marked_at), *params],
            )
        UsageRollupState.objects.filter(tenant_id=tenant_id).update(time_zone=zone)
    logger.info("usage rollups re-bucketed for a new time zone tenant=%s zone=%s", tenant_id, zone)


def _sync_time_zones(marked_at: datetime) -> int:
    changed = list(
        UsageRollupState.objects.exclude(time_zone=F("tenant__time_zone")).values_list("tenant_id", flat=True)
    )
    for tenant_id in changed:
        _rebuild_tenant(tenant_id, marked_at)
    return len(changed)


def usage_rollup_run(
    *, batch_size: int = DEFAULT_BATCH, now: datetime | None = None, progress: Progress | None = None
) -> RollupStats:
    """Roll up every hour marked pending before this run started. Safe to run twice or
    concurrently; each batch is one transaction."""
    started = timezone.now()
    now = now or started
    stats = RollupStats(tenants_rebuilt=_sync_time_zones(started))  # its markers are due in this run
    while True:
        with transaction.atomic():
            due = UsageRollupPending.objects.filter(touched_at__lte=started).order_by(
                "hour_start", "tenant_id"
            )
            tenant_ids = sorted(set(due.values_list("tenant_id", flat=True)[:batch_size]))
            if not tenant_ids:
                break
            states = _lock_states(tenant_ids)
            claimed = list(
                due.filter(tenant_id__in=tenant_ids)
                .select_for_update(skip_locked=True)
                .values_list("id", "tenant_id", "hour_start")[:batch_size]
            )
            if not claimed:
                break  # every due marker belongs to a transaction still writing: next run
            UsageRollupPending.objects.filter(id__in=[row[0] for row in claimed]).delete()
            markers = []
            for _, tenant_id, hour in claimed:
                horizon = states[tenant_id].purged_before
                if horizon is not None and hour < horizon:
                    stats.skipped_purged += 1  # the rest of that hour is gone: keep the rollup as is
                    continue
                markers.append((tenant_id, hour))
            zones = {tid: state.time_zone for tid, state in states.items()}
            batch = _recompute(spans_for_hours(markers, zones), zones, now)
            batch.hours_claimed = len(claimed)
            UsageRollupState.objects.filter(tenant_id__in=tenant_ids).update(rolled_up_at=now)
        stats.add(batch)
        if progress is not None:
            progress(len(claimed))
    if stats.hours_claimed:
        logger.info(
            "usage rolled up hours=%s hour_rows=%s day_rows=%s",
            stats.hours_claimed,
            stats.hour_rows,
            stats.day_rows,
        )
    return stats


def usage_rollup_pending_count() -> int:
    return UsageRollupPending.objects.count()


@dataclass(frozen=True)
class BackfillPlan:
    tenant_ids: list[int]
    first_day: date
    last_day: date  # inclusive
    slab_days: int

    @property
    def steps(self) -> int:
        chunks = -(-len(self.tenant_ids) // TENANT_CHUNK)
        slabs = -(-((self.last_day - self.first_day).days + 1) // self.slab_days)
        return chunks * slabs


def usage_rollup_backfill_plan(
    *,
    since: datetime,
    until: datetime | None = None,
    tenant_ids: Sequence[int] | None = None,
    slab_days: int = 7,
) -> BackfillPlan:
    until = until or timezone.now()
    if since >= until:
        raise ValueError("since must be before until")
    ids = (
        list(tenant_ids)
        if tenant_ids is not None
        else list(Tenant.objects.order_by("id").values_list("id", flat=True))
    )
    # Calendar dates wide enough for every zone (UTC-12 … UTC+14); each tenant is clipped below.
    return BackfillPlan(
        tenant_ids=sorted(ids),
        first_day=(since - timedelta(days=1)).date(),
        last_day=(until + timedelta(days=1)).date(),
        slab_days=max(1, slab_days),
    )


def usage_rollup_backfill(
    *,
    plan: BackfillPlan,
    since: datetime,
    until: datetime | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> RollupStats:
    """Recompute every bucket of the local days from the one containing `since` to the one
    containing `until` (default: now), for the planned tenants, one slab of days per transaction.
    Never reaches back past a tenant's purge horizon (those buckets cannot be rebuilt)."""
    now = now or timezone.now()
    until = until or now
    stats = RollupStats()
    day = plan.first_day
    while day <= plan.last_day:
        slab_end = min(day + timedelta(days=plan.slab_days), plan.last_day + timedelta(days=1))
        for start in range(0, len(plan.tenant_ids), TENANT_CHUNK):
            chunk = plan.tenant_ids[start : start + TENANT_CHUNK]
            with transaction.atomic():
                states = _lock_states(chunk)
                zones = {tid: state.time_zone for tid, state in states.items()}
                spans = []
                for tenant_id, state in states.items():
                    zone = zone_of(state.time_zone)
                    first = max(day, since.astimezone(zone).date())
                    last = min(slab_end - timedelta(days=1), (until - EPSILON).astimezone(zone).date())
                    if first > last:
                        continue
                    shift = hour_shift_minutes(state.time_zone)
                    lo = bucket_floor(local_midnight(first, zone), shift)
                    hi = bucket_floor(local_midnight(last + timedelta(days=1), zone), shift)
                    if state.purged_before is not None:
                        lo = max(lo, state.purged_before)
                    if lo < hi:
                        spans.append(Span(tenant_id, lo, hi, shift))
                batch = _recompute(merge_spans(spans), zones, now)
                stats.add(batch)
            if progress is not None:
                progress(1)
        day = slab_end
    return stats
