"""Reads for the usage dashboard: series per local day or hour (optionally one per API key or
model), totals per key or model, and quota consumption against the limits in force. Everything is
tenant-scoped and read from rollups (so it lags the ledger by at most one rollup interval), except
quota consumption, which reads the live counters.

Days and hours are the tenant's own (Tenant.time_zone): a series over 2026-03-08 in New York has
one point for that 23-hour day. Every point carries its UTC start and a local label."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import Sum
from django.utils import timezone

from realtime_platform.errors import BadRequest
from tenants.models import ApiKey, Tenant
from tenants.selectors import tenant_limits
from usage.models import Metric, QuotaAlert, QuotaCounter, UsageRollup
from usage.rollups import HOUR, bucket_floor, hour_shift_minutes, local_midnight, zone_of
from usage.services import period_end, period_start, tenant_metric_limit

GroupBy = Literal["api_key", "model"]
MAX_DAYS = 400
MAX_HOURS = 31 * 24
TOTAL = "total"


@dataclass(frozen=True)
class UsageTotals:
    responses: int = 0
    sessions: int = 0
    secrets: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    cached_image_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    audio_in_ms: int = 0
    audio_out_ms: int = 0
    cost_usd: Decimal = Decimal("0")

    @property
    def input_tokens(self) -> int:
        return self.input_text_tokens + self.input_audio_tokens + self.input_image_tokens

    @property
    def output_tokens(self) -> int:
        return self.output_text_tokens + self.output_audio_tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def audio_minutes(self) -> Decimal:
        return (Decimal(self.audio_in_ms + self.audio_out_ms) / 60_000).quantize(Decimal("0.01"))

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageTotals:
        counts: dict[str, Any] = {
            name: int(row.get(name) or 0) for name in UsageRollup.SUM_FIELDS if name != "cost_usd"
        }
        # str() first: SQLite sums decimals as floats
        cost = Decimal(str(row.get("cost_usd") or 0)).quantize(Decimal("0.00000001"))
        return cls(cost_usd=cost, **counts)


@dataclass(frozen=True)
class UsagePoint:
    start: datetime  # UTC instant at which the local day or hour begins
    label: str  # "2026-03-08" or "2026-03-08 14:00", local
    totals: UsageTotals


@dataclass(frozen=True)
class UsageSeries:
    key: str | int | None  # api key id / model name when grouped; "total" otherwise
    label: str
    points: list[UsagePoint]

    @property
    def totals(self) -> UsageTotals:
        total = UsageTotals()
        for point in self.points:
            total = total + point.totals
        return total


def _check_days(first_day: date, last_day: date) -> None:
    if last_day < first_day:
        raise BadRequest("The last day is before the first day.", param="last_day")
    if (last_day - first_day).days + 1 > MAX_DAYS:
        raise BadRequest(f"A daily series covers at most {MAX_DAYS} days.", param="first_day")


def _key_labels(tenant: Tenant, ids: Iterable[int | None]) -> dict[int | None, str]:
    known = dict(ApiKey.objects.filter(tenant=tenant, id__in=[i for i in ids if i]).values_list("id", "name"))
    return {i: known.get(i, "deleted key") if i else "no key" for i in ids}


def _rows(
    tenant: Tenant,
    granularity: str,
    lo: datetime,
    hi: datetime,
    group_by: GroupBy | None,
    api_key_id: int | None,
    model: str | None,
) -> list[dict[str, Any]]:
    rows = UsageRollup.objects.filter(
        tenant=tenant, granularity=granularity, bucket_start__gte=lo, bucket_start__lt=hi
    )
    if api_key_id is not None:
        rows = rows.filter(api_key_id=api_key_id)
    if model is not None:
        rows = rows.filter(model=model)
    dimensions = ["bucket_start"] + ([group_by if group_by == "model" else "api_key_id"] if group_by else [])
    return list(
        rows.values(*dimensions)
        .annotate(**{name: Sum(name) for name in UsageRollup.SUM_FIELDS})
        .order_by(*dimensions)
    )


def _series(
    tenant: Tenant,
    rows: list[dict[str, Any]],
    slots: list[tuple[datetime, str]],
    slot_of: Any,
    group_by: GroupBy | None,
) -> list[UsageSeries]:
    field = None if group_by is None else ("model" if group_by == "model" else "api_key_id")
    grouped: dict[Any, dict[datetime, UsageTotals]] = {}
    for row in rows:
        key = row[field] if field else TOTAL
        slot = slot_of(row["bucket_start"])
        bucket = grouped.setdefault(key, {})
        bucket[slot] = bucket.get(slot, UsageTotals()) + UsageTotals.from_row(row)
    if field is None:
        grouped.setdefault(TOTAL, {})
    labels: dict[Any, str]
    if group_by == "api_key":
        labels = dict(_key_labels(tenant, grouped.keys()))
    elif group_by == "model":
        labels = {key: key or "unknown model" for key in grouped}
    else:
        labels = {TOTAL: "Total"}
    series = [
        UsageSeries(
            key=key,
            label=labels[key],
            points=[UsagePoint(start, label, values.get(start, UsageTotals())) for start, label in slots],
        )
        for key, values in grouped.items()
    ]
    return sorted(series, key=lambda s: (-s.totals.cost_usd, -s.totals.total_tokens, s.label))


def usage_daily_series(
    *,
    tenant: Tenant,
    first_day: date,
    last_day: date,
    group_by: GroupBy | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
) -> list[UsageSeries]:
    """One point per local day from `first_day` to `last_day` (inclusive, zero-filled); one series
    in total, or one per API key / model (largest cost first)."""
    _check_days(first_day, last_day)
    zone = zone_of(tenant.time_zone)
    days = [first_day + timedelta(days=n) for n in range((last_day - first_day).days + 1)]
    slots = [(local_midnight(day, zone), day.isoformat()) for day in days]
    lo, hi = slots[0][0], local_midnight(last_day + timedelta(days=1), zone)
    rows = _rows(tenant, UsageRollup.Granularity.DAY, lo, hi, group_by, api_key_id, model)

    def slot_of(start: datetime) -> datetime:
        # rows of an earlier time zone (kept past the purge horizon) land on their nearest local day
        return local_midnight(start.astimezone(zone).date(), zone)

    return _series(tenant, rows, slots, slot_of, group_by)


def usage_hourly_series(
    *,
    tenant: Tenant,
    since: datetime,
    until: datetime,
    group_by: GroupBy | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
) -> list[UsageSeries]:
    """One point per local hour covering [since, until), zero-filled."""
    if until <= since:
        raise BadRequest("'until' must be after 'since'.", param="until")
    shift = hour_shift_minutes(tenant.time_zone)
    zone = zone_of(tenant.time_zone)
    start = bucket_floor(since, shift)
    slots: list[tuple[datetime, str]] = []
    while start < until:
        slots.append((start, start.astimezone(zone).strftime("%Y-%m-%d %H:%M")))
        start += HOUR
        if len(slots) > MAX_HOURS:
            raise BadRequest(f"An hourly series covers at most {MAX_HOURS} hours.", param="since")
    rows = _rows(tenant, UsageRollup.Granularity.HOUR, slots[0][0], start, group_by, api_key_id, model)
    return _series(tenant, rows, slots, lambda s: bucket_floor(s, shift), group_by)


@dataclass(frozen=True)
class UsageBreakdownRow:
    key: str | int | None
    label: str
    totals: UsageTotals


def usage_breakdown(
    *, tenant: Tenant, first_day: date, last_day: date, by: GroupBy
) -> list[UsageBreakdownRow]:
    """Totals per API key or per model over local days `first_day`…`last_day`, largest cost first."""
    return [
        UsageBreakdownRow(key=s.key, label=s.label, totals=s.totals)
        for s in usage_daily_series(tenant=tenant, first_day=first_day, last_day=last_day, group_by=by)
    ]


def usage_local_today(*, tenant: Tenant, now: datetime | None = None) -> date:
    return (now or timezone.now()).astimezone(zone_of(tenant.time_zone)).date()


# --- Quotas ---------------------------------------------------------------------------------------

QUOTA_NAMES = {
    Metric.SECRETS: ("secrets_per_day", "secrets"),
    Metric.SESSIONS: ("concurrent_sessions", "sessions"),
    Metric.AUDIO_MS: ("audio_minutes_per_month", "minutes"),
    Metric.TOKENS: ("tokens_per_month", "tokens"),
    Metric.COST_MICROUSD: ("cost_usd_per_month", "USD"),
}


def display_amount(metric: str, value: int) -> Decimal:
    if metric == Metric.AUDIO_MS:
        return (Decimal(value) / 60_000).quantize(Decimal("0.01"))
    if metric == Metric.COST_MICROUSD:
        return (Decimal(value) / 1_000_000).quantize(Decimal("0.01"))
    return Decimal(value)


@dataclass(frozen=True)
class QuotaStatus:
    metric: str
    name: str  # the limit's public name, e.g. "tokens_per_month"
    unit: str
    used: Decimal  # in `unit`
    limit: Decimal | None  # None: unlimited
    percent: float | None
    period_start: datetime | None  # None for concurrency, which has no period
    period_end: datetime | None


def quota_status(*, tenant: Tenant, now: datetime | None = None) -> list[QuotaStatus]:
    """Consumption of every quota in its current period (UTC days and months, as enforced)."""
    now = now or timezone.now()
    limits = tenant_limits(tenant=tenant)
    starts = {metric: period_start(metric, now) for metric in QUOTA_NAMES}
    used = {
        (metric, start): value
        for metric, start, value in QuotaCounter.objects.filter(
            tenant=tenant,
            api_key__isnull=True,
            metric__in=list(QUOTA_NAMES),
            period_start__in=set(starts.values()),
        ).values_list("metric", "period_start", "used")
    }
    statuses = []
    for metric, (name, unit) in QUOTA_NAMES.items():
        raw_used = used.get((metric, starts[metric]), 0)
        raw_limit = tenant_metric_limit(metric, limits)
        end = period_end(metric, starts[metric])
        statuses.append(
            QuotaStatus(
                metric=metric,
                name=name,
                unit=unit,
                used=display_amount(metric, raw_used),
                limit=None if raw_limit is None else display_amount(metric, raw_limit),
                percent=None if not raw_limit else round(raw_used * 100 / raw_limit, 2),
                period_start=starts[metric] if end is not None else None,
                period_end=end,
            )
        )
    return statuses


# --- Alerts ---------------------------------------------------------------------------------------


def quota_alert_list(*, tenant: Tenant, limit: int = 20) -> list[QuotaAlert]:
    """The tenant's most recent threshold crossings, newest first, with their deliveries."""
    return list(
        QuotaAlert.objects.filter(tenant=tenant)
        .prefetch_related("deliveries")
        .order_by("-created_at", "-threshold")[:limit]
    )


def usage_models_seen(*, tenant: Tenant) -> list[str]:
    """The models the tenant's daily rollups name (for a filter drop-down)."""
    models = (
        UsageRollup.objects.filter(tenant=tenant, granularity=UsageRollup.Granularity.DAY)
        .exclude(model="")
        .order_by("model")
        .values_list("model", flat=True)
        .distinct()
    )
    return list(models)
