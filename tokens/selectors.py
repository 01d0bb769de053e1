"""Reads of client secrets and of what issuance needs. Everything takes the tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from tenants.models import ApiKey, Tenant
from tenants.selectors import EffectiveLimits, limits_of
from tokens.models import ClientSecret
from tokens.policy import PolicyView
from usage.models import Metric
from usage.services import quota_used


@dataclass(frozen=True)
class IssuanceContext:
    policy: PolicyView
    limits: EffectiveLimits


# Load these with the key (api_key_authenticate(..., related=ISSUANCE_RELATED)) and
# issuance_context() needs no query of its own.
ISSUANCE_RELATED = ("tenant__plan", "tenant__quota_override", "tenant__session_policy")


def issuance_context(*, tenant: Tenant, api_key: ApiKey) -> IssuanceContext:
    """The tenant's policy, plan and limits (one query, or none when the key was loaded with
    ISSUANCE_RELATED); the key may override the secret kind."""
    loaded = (
        Tenant.plan.is_cached(tenant)
        and Tenant.session_policy.is_cached(tenant)
        and Tenant.quota_override.is_cached(tenant)
    )
    if not loaded:
        tenant = Tenant.objects.select_related("plan", "quota_override", "session_policy").get(pk=tenant.pk)
    policy = tenant.session_policy
    plan = tenant.plan
    try:
        override = tenant.quota_override
    except ObjectDoesNotExist:
        override = None
    limits = limits_of(plan, override)
    view = PolicyView(
        secret_kind=api_key.secret_kind or policy.secret_kind,
        allowed_models=tuple(policy.allowed_models or ()),
        allowed_voices=tuple(policy.allowed_voices or ()),
        ttl_default_seconds=policy.ttl_default_seconds,
        ttl_min_seconds=policy.ttl_min_seconds,
        ttl_max_seconds=policy.ttl_max_seconds,
        ttl_mode=policy.ttl_mode,
        instructions_prefix=policy.instructions_prefix,
        tool_allowlist=None if policy.tool_allowlist is None else tuple(policy.tool_allowlist),
        max_output_tokens_ceiling=policy.max_output_tokens_ceiling,
        locked_fields=tuple(policy.locked_fields or ()),
        relay_single_use=policy.relay_single_use,
        max_session_seconds=policy.max_session_seconds,
        session_cost_ceiling_usd=policy.session_cost_ceiling_usd,
        plan_ttl_max_seconds=plan.secret_ttl_max_seconds,
        plan_max_session_seconds=limits.max_session_seconds,
    )
    return IssuanceContext(policy=view, limits=limits)


# --- Listing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    items: list[ClientSecret]
    has_more: bool


def client_secret_list(
    *,
    tenant: Tenant,
    status: str | None = None,
    kind: str | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    now: datetime | None = None,
) -> QuerySet[ClientSecret]:
    """Newest first (created_at, then id, both descending: a stable order for cursors).

    `status` matches the stored status; with `now` it matches the status as of `now` instead
    (an active secret past its expiry is expired, whether or not the sweep has marked it yet)."""
    secrets = ClientSecret.objects.filter(tenant=tenant).select_related("api_key")
    if status and now is not None and status == ClientSecret.Status.ACTIVE:
        secrets = secrets.filter(status=status, expires_at__gt=now)
    elif status and now is not None and status == ClientSecret.Status.EXPIRED:
        secrets = secrets.filter(Q(status=status) | Q(status=ClientSecret.Status.ACTIVE, expires_at__lte=now))
    elif status:
        secrets = secrets.filter(status=status)
    if kind:
        secrets = secrets.filter(kind=kind)
    if api_key_id is not None:
        secrets = secrets.filter(api_key_id=api_key_id)
    if model:
        secrets = secrets.filter(model=model)
    if created_after is not None:
        secrets = secrets.filter(created_at__gte=created_after)
    if created_before is not None:
        secrets = secrets.filter(created_at__lt=created_before)
    return secrets.order_by("-created_at", "-id")


def client_secret_page(
    secrets: QuerySet[ClientSecret], *, tenant: Tenant, limit: int, after: str | None = None
) -> Page | None:
    """Keyset pagination: the `limit` secrets after the one with id `after` (None: from the
    start). None when `after` is not one of this tenant's secrets."""
    if after is not None:
        anchor = ClientSecret.objects.filter(tenant=tenant, id=after).values_list("created_at", "id").first()
        if anchor is None:
            return None
        created_at, anchor_id = anchor
        secrets = secrets.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=anchor_id))
    rows = list(secrets[: limit + 1])
    return Page(items=rows[:limit], has_more=len(rows) > limit)


def client_secret_get(*, tenant: Tenant, secret_id: str) -> ClientSecret | None:
    return ClientSecret.objects.select_related("api_key").filter(tenant=tenant, id=secret_id).first()


# --- Issuance summary -------------------------------------------------------------------------


def issuance_summary(*, tenant: Tenant, days: int, now: datetime | None = None) -> dict[str, Any]:
    """Secrets issued per UTC day (by kind) over the last `days` days, today's quota use, and the
    tenant's secrets by current status."""
    now = now or timezone.now()
    today = now.astimezone(UTC).date()
    first_day: date = today - timedelta(days=days - 1)
    start = datetime.combine(first_day, time.min, tzinfo=UTC)
    rows = (
        ClientSecret.objects.filter(tenant=tenant, created_at__gte=start)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(
            issued=Count("id"),
            relay=Count("id", filter=Q(kind=ClientSecret.Kind.RELAY)),
            upstream=Count("id", filter=Q(kind=ClientSecret.Kind.UPSTREAM)),
        )
        .order_by("day")
    )
    by_day: dict[date, dict[str, Any]] = {row["day"]: dict(row) for row in rows}
    days_out = []
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        row = by_day.get(day, {})
        days_out.append(
            {
                "date": day.isoformat(),
                "issued": row.get("issued", 0),
                "relay": row.get("relay", 0),
                "upstream": row.get("upstream", 0),
            }
        )
    status_counts = dict(
        ClientSecret.objects.filter(tenant=tenant).values_list("status").annotate(n=Count("id")).order_by()
    )
    return {
        "days": days_out,
        "today_reserved": quota_used(tenant=tenant, metric=Metric.SECRETS, now=now),
        "by_status": {status: status_counts.get(status, 0) for status in ClientSecret.Status.values},
    }
