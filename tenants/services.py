"""Every write to tenants, memberships, keys, limits, policies and upstream credentials.

Each service owns its transaction and records its audit event inside it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform import crypto
from realtime_platform.errors import BadRequest, Conflict
from tenants import keys
from tenants.models import (
    ALL_SCOPES,
    ApiKey,
    Membership,
    Plan,
    QuotaLimits,
    QuotaOverride,
    Role,
    SessionPolicy,
    Tenant,
    UpstreamCredential,
)
from tenants.selectors import tenant_limits

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

DEFAULT_PLAN = {
    "slug": "default",
    "name": "Default",
    "secrets_per_day": 10_000,
    "concurrent_sessions": 25,
    "audio_minutes_per_month": 30_000,
    "tokens_per_month": 50_000_000,
    "cost_usd_per_month": Decimal("1000.00"),
    "requests_per_minute": 600,
    "max_session_seconds": 3600,
    "secret_ttl_max_seconds": 7200,
}
DEFAULT_ALERT_THRESHOLDS = [50, 80, 95, 100]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal | datetime):
        return str(value)
    return value


def _snapshot(obj: Any, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {name: _jsonable(getattr(obj, name)) for name in names}


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: {"before": before[k], "after": after[k]} for k in before if before[k] != after[k]}


# --- Plans and tenants ------------------------------------------------------------------------


@transaction.atomic
def plan_get_or_create_default() -> Plan:
    plan, created = Plan.objects.get_or_create(slug=DEFAULT_PLAN["slug"], defaults=DEFAULT_PLAN)
    if created:
        audit_record(
            tenant=None,
            actor=Actor.system("default plan"),
            action="plan.created",
            target=plan,
            details={name: _jsonable(value) for name, value in DEFAULT_PLAN.items()},
        )
    return plan


@transaction.atomic
def tenant_create(*, slug: str, actor: Actor, name: str = "", plan: Plan | None = None) -> Tenant:
    try:
        validate_slug(slug)
    except ValidationError as exc:
        raise BadRequest(
            "Tenant slug may contain only letters, numbers, hyphens and underscores.", param="slug"
        ) from exc
    if Tenant.objects.filter(slug=slug).exists():
        raise Conflict(f"A tenant with slug '{slug}' already exists.", code="tenant_exists", param="slug")
    tenant = Tenant.objects.create(
        slug=slug,
        name=name or slug,
        plan=plan or plan_get_or_create_default(),
        alert_thresholds=list(DEFAULT_ALERT_THRESHOLDS),
    )
    SessionPolicy.objects.create(tenant=tenant)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="tenant.created",
        target=tenant,
        details={"slug": slug, "name": tenant.name, "plan": tenant.plan.slug},
    )
    logger.info("tenant created tenant=%s slug=%s", tenant.pk, slug)
    return tenant


@transaction.atomic
def tenant_set_status(*, tenant: Tenant, status: str, actor: Actor, reason: str = "") -> Tenant:
    if status not in Tenant.Status.values:
        raise BadRequest(f"Unknown tenant status '{status}'.", param="status")
    if tenant.status == status:
        return tenant
    before = tenant.status
    tenant.status = status
    tenant.suspended_at = timezone.now() if status == Tenant.Status.SUSPENDED else None
    tenant.save(update_fields=["status", "suspended_at"])
    action = "tenant.suspended" if status == Tenant.Status.SUSPENDED else "tenant.reactivated"
    audit_record(
        tenant=tenant,
        actor=actor,
        action=action,
        target=tenant,
        details={"status": {"before": before, "after": status}, "reason": reason},
    )
    if status == Tenant.Status.SUSPENDED:
        _close_relay_sessions_on_commit(tenant_id=tenant.pk, reason="tenant_suspended")
    return tenant


def _close_relay_sessions_on_commit(*, tenant_id: int, reason: str, api_key_id: int | None = None) -> None:
    """Live relayed sessions end once the change is committed (the relay's kill switch)."""

    def close() -> None:
        from relay.services import relay_terminate_sessions  # relay depends on tenants, not back

        relay_terminate_sessions(tenant_id=tenant_id, api_key_id=api_key_id, reason=reason)

    transaction.on_commit(close)


# --- Members ----------------------------------------------------------------------------------


def _other_owners(membership: Membership) -> bool:
    return (
        Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER)
        .exclude(pk=membership.pk)
        .select_for_update()
        .exists()
    )


@transaction.atomic
def membership_add(*, tenant: Tenant, user: User, role: str, actor: Actor) -> Membership:
    if role not in Role.values:
        raise BadRequest(f"Unknown role '{role}'.", param="role")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    except IntegrityError as exc:
        raise Conflict(f"{user.get_username()} is already a member.", code="member_exists") from exc
    audit_record(
        tenant=tenant,
        actor=actor,
        action="member.added",
        target=membership,
        details={"user": user.get_username(), "role": role},
    )
    return membership


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    if role not in Role.values:
        raise BadRequest(f"Unknown role '{role}'.", param="role")
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    if membership.role == role:
        return membership
    if membership.role == Role.OWNER and not _other_owners(membership):
        raise Conflict("A tenant must keep at least one owner.", code="last_owner")
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        tenant=membership.tenant,
        actor=actor,
        action="member.role_changed",
        target=membership,
        details={"user": membership.user.get_username(), "role": {"before": before, "after": role}},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor) -> None:
    membership = Membership.objects.select_for_update().select_related("user", "tenant").get(pk=membership.pk)
    if membership.role == Role.OWNER and not _other_owners(membership):
        raise Conflict("The last owner cannot be removed.", code="last_owner")
    audit_record(
        tenant=membership.tenant,
        actor=actor,
        action="member.removed",
        target=membership,
        details={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


# --- API keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedApiKey:
    """A key just created, with its plaintext: the only place the plaintext ever exists."""

    api_key: ApiKey
    plaintext: str


def _validate_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise BadRequest(
            f"Unknown scope(s): {', '.join(unknown)}. Known scopes: {', '.join(ALL_SCOPES)}.", param="scopes"
        )
    if not scopes:
        raise BadRequest("An API key needs at least one scope.", param="scopes")
    return [scope for scope in ALL_SCOPES if scope in scopes]


def _insert_key(template: ApiKey) -> str:
    """Save `template` with fresh key material; returns the plaintext. A lookup-prefix collision
    (8 random base62 characters) is astronomically rare, but costs only a retry."""
    for _ in range(5):
        generated = keys.generate(keys.KeyType.API_KEY)
        template.prefix = generated.prefix
        template.last_four = generated.last_four
        template.fingerprint = generated.fingerprint
        try:
            with transaction.atomic():
                template.save(force_insert=True)
        except IntegrityError:
            template.pk = None
            continue
        return generated.plaintext
    raise RuntimeError("could not allocate a unique API key prefix")


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    actor: Actor,
    scopes: list[str] | tuple[str, ...] = ALL_SCOPES,
    expires_at: datetime | None = None,
    created_by: User | None = None,
    secrets_per_day: int | None = None,
    concurrent_sessions: int | None = None,
    cost_usd_per_month: Decimal | None = None,
) -> IssuedApiKey:
    name = name.strip()
    if not name or len(name) > 100:
        raise BadRequest("API key name must be 1 to 100 characters.", param="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise BadRequest("expires_at must be in the future.", param="expires_at")
    _validate_key_limits(
        tenant,
        {
            "secrets_per_day": secrets_per_day,
            "concurrent_sessions": concurrent_sessions,
            "cost_usd_per_month": cost_usd_per_month,
        },
    )
    api_key = ApiKey(
        tenant=tenant,
        name=name,
        scopes=_validate_scopes(scopes),
        expires_at=expires_at,
        created_by=created_by,
        secrets_per_day=secrets_per_day,
        concurrent_sessions=concurrent_sessions,
        cost_usd_per_month=cost_usd_per_month,
    )
    plaintext = _insert_key(api_key)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="key.created",
        target=api_key,
        details={
            "prefix": api_key.prefix,
            "name": name,
            "scopes": api_key.scopes,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return IssuedApiKey(api_key=api_key, plaintext=plaintext)


@transaction.atomic
def api_key_rotate(*, api_key: ApiKey, actor: Actor, grace_seconds: int = 0) -> IssuedApiKey:
    """A new key with the same name, scopes and limits. The old one stops working now, or after
    `grace_seconds` so deployed clients can switch over (as Stripe's "roll key" does)."""
    old = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if old.revoked_at is not None:
        raise Conflict("A revoked key cannot be rotated.", code="key_revoked")
    if grace_seconds < 0 or grace_seconds > 7 * 86400:
        raise BadRequest("grace_seconds must be between 0 and 604800.", param="grace_seconds")
    new = ApiKey(
        tenant_id=old.tenant_id,
        name=old.name,
        scopes=old.scopes,
        expires_at=old.expires_at,
        created_by=old.created_by,
        rotated_from=old,
        secrets_per_day=old.secrets_per_day,
        concurrent_sessions=old.concurrent_sessions,
        cost_usd_per_month=old.cost_usd_per_month,
        secret_kind=old.secret_kind,
    )
    plaintext = _insert_key(new)
    now = timezone.now()
    if grace_seconds == 0:
        old.revoked_at = now
        old.save(update_fields=["revoked_at"])
        _close_relay_sessions_on_commit(tenant_id=old.tenant_id, api_key_id=old.pk, reason="key_revoked")
    else:
        cutoff = now + timedelta(seconds=grace_seconds)
        old.expires_at = min(old.expires_at, cutoff) if old.expires_at else cutoff
        old.save(update_fields=["expires_at"])
    audit_record(
        tenant=old.tenant,
        actor=actor,
        action="key.rotated",
        target=new,
        details={"old_prefix": old.prefix, "new_prefix": new.prefix, "grace_seconds": grace_seconds},
    )
    return IssuedApiKey(api_key=new, plaintext=plaintext)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey, actor: Actor) -> ApiKey:
    updated = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    api_key.refresh_from_db(fields=["revoked_at"])
    if not updated:
        return api_key  # revoking twice is harmless, and retries rely on that
    audit_record(
        tenant=api_key.tenant,
        actor=actor,
        action="key.revoked",
        target=api_key,
        details={"prefix": api_key.prefix, "name": api_key.name},
    )
    _close_relay_sessions_on_commit(tenant_id=api_key.tenant_id, api_key_id=api_key.pk, reason="key_revoked")
    return api_key


KEY_LIMIT_FIELDS = ("secrets_per_day", "concurrent_sessions", "cost_usd_per_month")
KEY_SETTING_FIELDS = (*KEY_LIMIT_FIELDS, "secret_kind")


def _validate_key_limits(tenant: Tenant, values: dict[str, Any]) -> None:
    """A key's sub-limit may only be tighter than (or equal to) the tenant's limit in force."""
    limits = tenant_limits(tenant=tenant)
    for name in KEY_LIMIT_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if value < 0:
            raise BadRequest(f"{name} cannot be negative.", param=name)
        tenant_value = getattr(limits, name)
        if tenant_value is not None and value > tenant_value:
            raise BadRequest(
                f"{name} cannot exceed the tenant's limit of {tenant_value}.",
                param=name,
                code="above_tenant_limit",
            )


@transaction.atomic
def api_key_settings_update(*, api_key: ApiKey, actor: Actor, values: dict[str, Any]) -> ApiKey:
    """Change a key's sub-limits (null: only the tenant's limit applies) and its per-key secret
    kind ("": as the tenant's session policy says). Audited with before and after."""
    unknown = set(values) - set(KEY_SETTING_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown key setting(s): {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    api_key = ApiKey.objects.select_for_update().select_related("tenant__plan").get(pk=api_key.pk)
    if api_key.revoked_at is not None:
        raise Conflict("A revoked key cannot be changed.", code="key_revoked")
    kind = values.get("secret_kind", api_key.secret_kind)
    if kind not in ("", *SessionPolicy.SecretKind.values):
        raise BadRequest("secret_kind must be '', 'relay' or 'upstream'.", param="secret_kind")
    _validate_key_limits(api_key.tenant, values)
    before = _snapshot(api_key, list(values))
    for name, value in values.items():
        setattr(api_key, name, value)
    api_key.save(update_fields=list(values))
    changes = _changes(before, _snapshot(api_key, list(values)))
    if changes:
        audit_record(
            tenant=api_key.tenant,
            actor=actor,
            action="key.settings_changed",
            target=api_key,
            details={"prefix": api_key.prefix, "changes": changes},
        )
    return api_key


def api_key_touch(*, api_key: ApiKey, now: datetime) -> None:
    """Record use at most once per resolution window: one conditional UPDATE that matches no row
    on almost every request, instead of a write per request."""
    from django.conf import settings

    resolution = timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION_SECONDS)
    if api_key.last_used_at is not None and now - api_key.last_used_at < resolution:
        return
    from django.db.models import Q

    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - resolution), pk=api_key.pk
    ).update(last_used_at=now)


# --- Limits and session policy ----------------------------------------------------------------


@transaction.atomic
def quota_override_update(*, tenant: Tenant, actor: Actor, values: dict[str, Any]) -> QuotaOverride:
    """Set the tenant's own limits. Each may only tighten the plan's (None: as the plan says)."""
    unknown = set(values) - set(QuotaLimits.LIMIT_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown limit(s): {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    for name, value in values.items():
        if value is None:
            continue
        if value < 0:
            raise BadRequest(f"{name} cannot be negative.", param=name)
        plan_value = getattr(tenant.plan, name)
        if plan_value is not None and value > plan_value:
            raise BadRequest(
                f"{name} cannot exceed the plan's limit of {plan_value}.", param=name, code="above_plan_limit"
            )
    override, _ = QuotaOverride.objects.select_for_update().get_or_create(tenant=tenant)
    before = _snapshot(override, list(values))
    for name, value in values.items():
        setattr(override, name, value)
    override.save()
    changes = _changes(before, _snapshot(override, list(values)))
    if changes:
        audit_record(
            tenant=tenant, actor=actor, action="quota.changed", target=override, details={"changes": changes}
        )
    return override


POLICY_FIELDS = (
    "secret_kind",
    "allowed_models",
    "allowed_voices",
    "ttl_default_seconds",
    "ttl_min_seconds",
    "ttl_max_seconds",
    "ttl_mode",
    "instructions_prefix",
    "tool_allowlist",
    "max_output_tokens_ceiling",
    "locked_fields",
    "relay_single_use",
    "max_session_seconds",
    "session_cost_ceiling_usd",
)


def _validate_policy(policy: SessionPolicy, plan: Plan) -> None:
    if policy.secret_kind not in SessionPolicy.SecretKind.values:
        raise BadRequest("secret_kind must be 'relay' or 'upstream'.", param="secret_kind")
    if policy.ttl_mode not in SessionPolicy.TtlMode.values:
        raise BadRequest("ttl_mode must be 'clamp' or 'reject'.", param="ttl_mode")
    if not 10 <= policy.ttl_min_seconds <= policy.ttl_default_seconds <= policy.ttl_max_seconds:
        raise BadRequest(
            "TTL bounds must satisfy 10 <= minimum <= default <= maximum.", param="ttl_default_seconds"
        )
    if policy.ttl_max_seconds > min(plan.secret_ttl_max_seconds, 7200):
        raise BadRequest(
            f"ttl_max_seconds cannot exceed {min(plan.secret_ttl_max_seconds, 7200)} on this plan.",
            param="ttl_max_seconds",
        )
    for name in ("allowed_models", "allowed_voices", "locked_fields"):
        value = getattr(policy, name)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise BadRequest(f"{name} must be a list of non-empty strings.", param=name)
    if policy.tool_allowlist is not None and (
        not isinstance(policy.tool_allowlist, list)
        or not all(isinstance(v, str) for v in policy.tool_allowlist)
    ):
        raise BadRequest("tool_allowlist must be null or a list of tool names.", param="tool_allowlist")
    if policy.max_output_tokens_ceiling is not None and not 1 <= policy.max_output_tokens_ceiling <= 4096:
        raise BadRequest(
            "max_output_tokens_ceiling must be between 1 and 4096.", param="max_output_tokens_ceiling"
        )
    if plan.max_session_seconds is not None and policy.max_session_seconds > plan.max_session_seconds:
        raise BadRequest(
            f"max_session_seconds cannot exceed the plan's {plan.max_session_seconds}.",
            param="max_session_seconds",
        )
    if policy.max_session_seconds < 1:
        raise BadRequest("max_session_seconds must be positive.", param="max_session_seconds")


@transaction.atomic
def session_policy_update(*, tenant: Tenant, actor: Actor, values: dict[str, Any]) -> SessionPolicy:
    unknown = set(values) - set(POLICY_FIELDS)
    if unknown:
        raise BadRequest(f"Unknown policy field(s): {', '.join(sorted(unknown))}.", param=sorted(unknown)[0])
    policy = SessionPolicy.objects.select_for_update().get(tenant=tenant)
    before = _snapshot(policy, list(values))
    for name, value in values.items():
        setattr(policy, name, value)
    _validate_policy(policy, tenant.plan)
    policy.save()
    changes = _changes(before, _snapshot(policy, list(values)))
    if changes:
        audit_record(
            tenant=tenant, actor=actor, action="policy.changed", target=policy, details={"changes": changes}
        )
    return policy


# --- Upstream credentials ---------------------------------------------------------------------


@transaction.atomic
def upstream_credential_set(
    *, tenant: Tenant, secret: str, actor: Actor, user: User | None = None
) -> UpstreamCredential:
    """Store the tenant's own OpenAI key, encrypted; audit records only its last four."""
    secret = secret.strip()
    if len(secret) < 20 or len(secret) > 512 or any(ch.isspace() for ch in secret):
        raise BadRequest("That does not look like an OpenAI API key.", param="secret")
    existing = UpstreamCredential.objects.select_for_update().filter(tenant=tenant).first()
    credential = existing or UpstreamCredential(tenant=tenant)
    credential.ciphertext = crypto.encrypt(secret)
    credential.last_four = secret[-4:]
    credential.updated_by = user if user is not None and user.is_authenticated else None
    credential.save()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="upstream_credential.replaced" if existing else "upstream_credential.set",
        target=credential,
        details={"last_four": credential.last_four},
    )
    return credential


@transaction.atomic
def upstream_credential_delete(*, tenant: Tenant, actor: Actor) -> None:
    credential = UpstreamCredential.objects.select_for_update().filter(tenant=tenant).first()
    if credential is None:
        return
    audit_record(
        tenant=tenant,
        actor=actor,
        action="upstream_credential.deleted",
        target=credential,
        details={"last_four": credential.last_four},
    )
    credential.delete()
    if tenant.upstream_mode == Tenant.UpstreamMode.OWN:
        tenant.upstream_mode = Tenant.UpstreamMode.PLATFORM
        tenant.save(update_fields=["upstream_mode"])


@transaction.atomic
def tenant_upstream_mode_set(*, tenant: Tenant, mode: str, actor: Actor) -> Tenant:
    """Switch between the platform's OpenAI key and the tenant's own (which must be saved first)."""
    if mode not in Tenant.UpstreamMode.values:
        raise BadRequest("upstream_mode must be 'platform' or 'own'.", param="upstream_mode")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if tenant.upstream_mode == mode:
        return tenant
    if mode == Tenant.UpstreamMode.OWN and not UpstreamCredential.objects.filter(tenant=tenant).exists():
        raise BadRequest(
            "Save your own OpenAI API key before switching to it.",
            param="upstream_mode",
            code="no_credential",
        )
    before = tenant.upstream_mode
    tenant.upstream_mode = mode
    tenant.save(update_fields=["upstream_mode"])
    audit_record(
        tenant=tenant,
        actor=actor,
        action="tenant.upstream_mode_changed",
        target=tenant,
        details={"upstream_mode": {"before": before, "after": mode}},
    )
    return tenant


def upstream_credential_reencrypt_all(*, actor: Actor | None = None) -> int:
    """Re-encrypt every stored credential under the newest key (after prepending a new one).
    Recorded once on the platform chain (no key material, only how many)."""
    count = 0
    for credential in UpstreamCredential.objects.only("pk", "ciphertext").iterator():
        UpstreamCredential.objects.filter(pk=credential.pk).update(
            ciphertext=crypto.rotate(credential.ciphertext)
        )
        count += 1
    audit_record(
        tenant=None,
        actor=actor or Actor.system("upstream credential re-encryption"),
        action="upstream_credential.reencrypted",
        target_type="tenants.upstreamcredential",
        details={"credentials": count},
    )
    return count
