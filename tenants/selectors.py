"""Reads of tenant data. Everything that lists takes the tenant, so nothing is unscoped."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db.models import QuerySet

from tenants.models import ApiKey, Membership, Plan, QuotaLimits, QuotaOverride, Tenant

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits in force for a tenant: its override where set, else its plan. None: unlimited."""

    secrets_per_day: int | None
    concurrent_sessions: int | None
    audio_minutes_per_month: int | None
    tokens_per_month: int | None
    cost_usd_per_month: Decimal | None
    requests_per_minute: int | None
    max_session_seconds: int | None


def limits_of(plan: QuotaLimits, override: QuotaLimits | None) -> EffectiveLimits:
    values = {}
    for name in QuotaLimits.LIMIT_FIELDS:
        own = getattr(override, name) if override is not None else None
        values[name] = own if own is not None else getattr(plan, name)
    return EffectiveLimits(**values)


def tenant_limits(*, tenant: Tenant) -> EffectiveLimits:
    override = QuotaOverride.objects.filter(tenant=tenant).first()
    return limits_of(tenant.plan, override)


def tenant_get(*, slug: str) -> Tenant | None:
    return Tenant.objects.select_related("plan").filter(slug=slug).first()


def plan_get(*, slug: str) -> Plan | None:
    return Plan.objects.filter(slug=slug).first()


def membership_get(*, user: User | AnonymousUser, tenant_id: int) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.select_related("tenant").filter(user=user, tenant_id=tenant_id).first()


def membership_list_for_user(*, user: User | AnonymousUser) -> QuerySet[Membership]:
    if not user.is_authenticated:
        return Membership.objects.none()
    return Membership.objects.select_related("tenant").filter(user=user).order_by("tenant__name")


def membership_list(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.select_related("user").filter(tenant=tenant).order_by("user__username")


def api_key_list(*, tenant: Tenant, include_revoked: bool = True) -> QuerySet[ApiKey]:
    keys = ApiKey.objects.filter(tenant=tenant).order_by("-created_at", "-id")
    if not include_revoked:
        keys = keys.filter(revoked_at__isnull=True)
    return keys


def api_key_get(*, tenant: Tenant, key_id: int) -> ApiKey | None:
    return ApiKey.objects.filter(tenant=tenant, id=key_id).first()


def upstream_api_key(*, tenant: Tenant) -> str | None:
    """The tenant's own OpenAI key, decrypted for one upstream call. Never log or store it."""
    from realtime_platform import crypto
    from tenants.models import UpstreamCredential

    ciphertext = UpstreamCredential.objects.filter(tenant=tenant).values_list("ciphertext", flat=True).first()
    return crypto.decrypt(ciphertext) if ciphertext else None


def user_find(*, identifier: str) -> User | None:
    """The active user whose username is `identifier`, else the one active user with that email
    (case-insensitive). None when there is no such user, or several share the email."""
    from django.contrib.auth import get_user_model

    identifier = identifier.strip()
    if not identifier:
        return None
    users = get_user_model().objects.filter(is_active=True)
    by_username = users.filter(username=identifier).first()
    if by_username is not None:
        return by_username
    if "@" not in identifier:
        return None
    by_email = list(users.filter(email__iexact=identifier)[:2])
    return by_email[0] if len(by_email) == 1 else None
