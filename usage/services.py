"""Quota counters (exact under concurrency) and the usage ledger (each fact written once)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from realtime_platform.errors import QuotaExceeded
from tenants.models import ApiKey, Tenant
from tenants.selectors import EffectiveLimits, tenant_limits
from usage.models import Metric, QuotaCounter, UsageEvent
from usage.pricing import TokenUsage, cost_of, to_microusd
from usage.rollups import rollup_mark_pending

logger = logging.getLogger(__name__)

# Concurrency has no period: one row per tenant (and key) whose period_start is this constant.
NO_PERIOD = datetime(2000, 1, 1, tzinfo=UTC)
DAILY = frozenset({Metric.SECRETS})
MONTHLY = frozenset({Metric.AUDIO_MS, Metric.TOKENS, Metric.COST_MICROUSD})


def period_start(metric: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if metric in DAILY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if metric in MONTHLY:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return NO_PERIOD


def period_end(metric: str, start: datetime) -> datetime | None:
    if metric in DAILY:
        return start + timedelta(days=1)
    if metric in MONTHLY:
        return (start + timedelta(days=32)).replace(day=1)
    return None


def tenant_metric_limit(metric: str, limits: EffectiveLimits) -> int | None:
    """The tenant's limit for `metric`, in the counter's integer unit (None: unlimited)."""
    if metric == Metric.SECRETS:
        return limits.secrets_per_day
    if metric == Metric.SESSIONS:
        return limits.concurrent_sessions
    if metric == Metric.AUDIO_MS:
        return None if limits.audio_minutes_per_month is None else limits.audio_minutes_per_month * 60_000
    if metric == Metric.TOKENS:
        return limits.tokens_per_month
    if metric == Metric.COST_MICROUSD:
        return None if limits.cost_usd_per_month is None else to_microusd(limits.cost_usd_per_month)
    raise ValueError(f"unknown metric {metric!r}")


def key_metric_limit(metric: str, api_key: ApiKey | None) -> int | None:
    if api_key is None:
        return None
    if metric == Metric.SECRETS:
        return api_key.secrets_per_day
    if metric == Metric.SESSIONS:
        return api_key.concurrent_sessions
    if metric == Metric.COST_MICROUSD and api_key.cost_usd_per_month is not None:
        return to_microusd(api_key.cost_usd_per_month)
    return None


_EXCEEDED_MESSAGES = {
    Metric.SECRETS: (
        "You have reached the limit of {limit} client secrets per day{scope}.",
        "insufficient_quota",
    ),
    Metric.SESSIONS: (
        "You have reached the limit of {limit} concurrent realtime sessions{scope}.",
        "concurrent_session_limit",
    ),
    Metric.AUDIO_MS: ("You have used up your monthly audio allowance{scope}.", "insufficient_quota"),
    Metric.TOKENS: ("You have used up your monthly token allowance{scope}.", "insufficient_quota"),
    Metric.COST_MICROUSD: ("You have reached your monthly spending limit{scope}.", "insufficient_quota"),
}


def _exceeded(metric: str, limit: int, *, for_key: bool) -> QuotaExceeded:
    template, code = _EXCEEDED_MESSAGES[Metric(metric)]
    return QuotaExceeded(
        template.format(limit=limit, scope=" for this API key" if for_key else ""), code=code
    )


def _counter_filter(tenant_id: int, api_key_id: int | None, metric: str, start: datetime) -> dict[str, Any]:
    if api_key_id is None:
        return {"tenant_id": tenant_id, "api_key__isnull": True, "metric": metric, "period_start": start}
    return {"api_key_id": api_key_id, "metric": metric, "period_start": start}


def _ensure_counter(tenant_id: int, api_key_id: int | None, metric: str, start: datetime) -> None:
    QuotaCounter.objects.bulk_create(
        [QuotaCounter(tenant_id=tenant_id, api_key_id=api_key_id, metric=metric, period_start=start)],
        ignore_conflicts=True,  # a concurrent request may have created it a moment ago
    )


def _debit(
    tenant_id: int, api_key_id: int | None, metric: str, start: datetime, amount: int, limit: int | None
) -> bool:
    """One conditional UPDATE: add `amount` unless that would pass `limit`. True if it was added."""
    where = _counter_filter(tenant_id, api_key_id, metric, start)
    for attempt in range(2):
        rows = QuotaCounter.objects.filter(**where)
        if limit is not None:
            rows = rows.filter(used__lte=limit - amount)
        if rows.update(used=F("used") + amount, updated_at=timezone.now()):
            return True
        if attempt == 0 and not QuotaCounter.objects.filter(**where).exists():
            _ensure_counter(tenant_id, api_key_id, metric, start)
            continue
        return False
    return False


@dataclass(frozen=True)
class Reservation:
    tenant_id: int
    api_key_id: int | None  # set only when the key has a sub-limit and was debited too
    metric: str
    amount: int
    period_start: datetime


def quota_reserve(
    *,
    tenant: Tenant,
    metric: str,
    amount: int = 1,
    api_key: ApiKey | None = None,
    limits: EffectiveLimits | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Take `amount` of `metric` from the tenant's (and the key's) allowance, or raise
    QuotaExceeded having taken nothing. Call it in its own short transaction: the counter row
    stays locked until commit."""
    limits = limits if limits is not None else tenant_limits(tenant=tenant)
    start = period_start(metric, now or timezone.now())
    tenant_limit = tenant_metric_limit(metric, limits)
    key_limit = key_metric_limit(metric, api_key)
    with transaction.atomic():
        if not _debit(tenant.pk, None, metric, start, amount, tenant_limit):
            raise _exceeded(metric, tenant_limit or 0, for_key=False)
        if (
            key_limit is not None
            and api_key is not None
            and not _debit(tenant.pk, api_key.pk, metric, start, amount, key_limit)
        ):
            raise _exceeded(metric, key_limit, for_key=True)  # rolls back the tenant debit too
    return Reservation(
        tenant_id=tenant.pk,
        api_key_id=api_key.pk if key_limit is not None and api_key is not None else None,
        metric=metric,
        amount=amount,
        period_start=start,
    )


def quota_release(*, reservation: Reservation) -> None:
    """Give a reservation back (the request it paid for failed, or the session ended)."""
    targets = [None] if reservation.api_key_id is None else [None, reservation.api_key_id]
    with transaction.atomic():
        for api_key_id in targets:
            QuotaCounter.objects.filter(
                **_counter_filter(
                    reservation.tenant_id, api_key_id, reservation.metric, reservation.period_start
                )
            ).update(used=Greatest(F("used") - reservation.amount, 0), updated_at=timezone.now())


def quota_release_sessions(*, tenant_counts: Mapping[int, int], key_counts: Mapping[int, int]) -> None:
    """Give back concurrency slots in bulk (the stale-session sweep): `tenant_counts` maps tenant
    id to slots, `key_counts` maps API key id to slots for keys whose own counter was debited.
    Call it in the transaction that ended those sessions, and only for sessions that transaction
    actually moved from active to ended, so a slot is never released twice."""
    now = timezone.now()
    for tenant_id, count in sorted(tenant_counts.items()):
        QuotaCounter.objects.filter(**_counter_filter(tenant_id, None, Metric.SESSIONS, NO_PERIOD)).update(
            used=Greatest(F("used") - count, 0), updated_at=now
        )
    for api_key_id, count in sorted(key_counts.items()):
        QuotaCounter.objects.filter(
            api_key_id=api_key_id, metric=Metric.SESSIONS, period_start=NO_PERIOD
        ).update(used=Greatest(F("used") - count, 0), updated_at=now)


def quota_used(
    *, tenant: Tenant, metric: str, api_key: ApiKey | None = None, now: datetime | None = None
) -> int:
    start = period_start(metric, now or timezone.now())
    where = _counter_filter(tenant.pk, api_key.pk if api_key else None, metric, start)
    used = QuotaCounter.objects.filter(**where).values_list("used", flat=True).first()
    return int(used or 0)


@dataclass(frozen=True)
class ChargeOutcome:
    exhausted: list[str] = field(default_factory=list)  # metrics now at or past their limit


def _charge(
    tenant: Tenant, api_key: ApiKey | None, metric: str, amount: int, limits: EffectiveLimits, now: datetime
) -> bool:
    """Add usage that already happened (it cannot be refused); True if a limit is now reached."""
    start = period_start(metric, now)
    scopes: list[tuple[int | None, int | None]] = [(None, tenant_metric_limit(metric, limits))]
    key_limit = key_metric_limit(metric, api_key)
    if api_key is not None and key_limit is not None:
        scopes.append((api_key.pk, key_limit))
    reached = False
    for api_key_id, limit in scopes:
        _debit(tenant.pk, api_key_id, metric, start, amount, None)
        if limit is not None:
            where = _counter_filter(tenant.pk, api_key_id, metric, start)
            used = QuotaCounter.objects.filter(**where).values_list("used", flat=True)[0]
            reached = reached or used >= limit
    return reached


@dataclass(frozen=True)
class RecordedUsage:
    event: UsageEvent
    created: bool
    outcome: ChargeOutcome


def usage_record(
    *,
    tenant: Tenant,
    kind: str,
    natural_key: str,
    api_key: ApiKey | None = None,
    model: str = "",
    tokens: TokenUsage | None = None,
    audio_in_ms: int = 0,
    audio_out_ms: int = 0,
    session_id: str | None = None,
    client_secret_id: str | None = None,
    occurred_at: datetime | None = None,
    charge: bool = True,
) -> RecordedUsage:
    """Write one metered fact and charge it to the monthly counters, exactly once per
    `natural_key`: a replay finds the existing row and charges nothing."""
    tokens = tokens or TokenUsage()
    cost = cost_of(model, tokens) if model and tokens.total else Decimal("0")
    occurred_at = occurred_at or timezone.now()
    try:
        with transaction.atomic():
            event = UsageEvent.objects.create(
                tenant=tenant,
                api_key=api_key,
                session_id=session_id,
                client_secret_id=client_secret_id,
                kind=kind,
                natural_key=natural_key,
                model=model,
                occurred_at=occurred_at,
                input_text_tokens=tokens.input_text,
                input_audio_tokens=tokens.input_audio,
                input_image_tokens=tokens.input_image,
                cached_text_tokens=tokens.cached_text,
                cached_audio_tokens=tokens.cached_audio,
                cached_image_tokens=tokens.cached_image,
                output_text_tokens=tokens.output_text,
                output_audio_tokens=tokens.output_audio,
                audio_in_ms=audio_in_ms,
                audio_out_ms=audio_out_ms,
                cost_usd=cost,
            )
            rollup_mark_pending(tenant_id=tenant.pk, occurred_at=occurred_at)
            exhausted: list[str] = []
            if charge:
                limits = tenant_limits(tenant=tenant)
                for metric, amount in (
                    (Metric.TOKENS, tokens.total),
                    (Metric.COST_MICROUSD, to_microusd(cost)),
                    (Metric.AUDIO_MS, audio_in_ms + audio_out_ms),
                ):
                    if amount and _charge(tenant, api_key, metric, amount, limits, occurred_at):
                        exhausted.append(metric)
    except IntegrityError:
        existing = UsageEvent.objects.filter(natural_key=natural_key).first()
        if existing is None:
            raise  # not a replay: some other constraint failed
        logger.info("usage already recorded tenant=%s key=%s", tenant.pk, natural_key)
        return RecordedUsage(event=existing, created=False, outcome=ChargeOutcome())
    return RecordedUsage(event=event, created=True, outcome=ChargeOutcome(exhausted=exhausted))
