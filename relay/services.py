"""Writes of relayed realtime sessions: open (the handshake), meter, heartbeat, end, and the kill switch.

All sync (the consumer calls them through `database_sync_to_async`); each owns its transaction.

Invariant shared with the stale-session sweep: an ACTIVE RealtimeSession holds one concurrency slot
(`usage` metric "sessions": the tenant's counter, plus its API key's when `slot_key_held`). The one
statement that moves a row from ACTIVE to ENDED decides who releases that slot, so it is released
exactly once whichever path ends the session (`relay_session_end` here, or the stale-session
sweep in relay/sweeps.py for sessions whose process died).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform.errors import (
    ApplicationError,
    AuthenticationFailed,
    BadRequest,
    PermissionDenied,
    QuotaExceeded,
)
from relay.core import (
    GROUP_KEY,
    GROUP_SECRET,
    GROUP_SESSION,
    GROUP_TENANT,
    TERMINATE,
    EndReason,
    UpstreamConnector,
)
from relay.models import RealtimeSession
from relay.policy import SessionRules, normalize_locked
from relay.upstream import upstream_connector_for
from tenants import keys
from tenants.auth import INCORRECT_KEY_MESSAGE, MISSING_KEY_MESSAGE, api_key_authenticate
from tenants.models import ApiKey, Scope, SessionPolicy, Tenant
from tenants.selectors import EffectiveLimits, tenant_limits
from tokens.models import ClientSecret
from tokens.redemption import relay_token_find, relay_token_redeem
from usage.models import Metric, UsageEvent
from usage.pricing import TokenUsage
from usage.services import (
    NO_PERIOD,
    Reservation,
    key_metric_limit,
    quota_release,
    quota_reserve,
    quota_used,
    tenant_metric_limit,
    usage_record,
)

logger = logging.getLogger(__name__)

MONTHLY_METRICS = (Metric.TOKENS, Metric.COST_MICROUSD, Metric.AUDIO_MS)
QUOTA_MESSAGES = {
    Metric.TOKENS: "You have used up your monthly token allowance",
    Metric.COST_MICROUSD: "You have reached your monthly spending limit",
    Metric.AUDIO_MS: "You have used up your monthly audio allowance",
}


# --- Policy → what the relay enforces -----------------------------------------------------------


def session_rules_for(policy: SessionPolicy | None) -> SessionRules:
    if policy is None:
        return SessionRules()
    return SessionRules(
        locked_fields=normalize_locked(str(f) for f in policy.locked_fields or []),
        allowed_voices=frozenset(str(v) for v in policy.allowed_voices or []),
        tool_allowlist=None
        if policy.tool_allowlist is None
        else frozenset(str(t) for t in policy.tool_allowlist),
        max_output_tokens_ceiling=policy.max_output_tokens_ceiling,
        instructions_prefix=policy.instructions_prefix,
        allowed_models=frozenset(str(m) for m in policy.allowed_models or []),
    )


def policy_session_config(policy: SessionPolicy | None) -> dict[str, Any] | None:
    """The config an API-key session starts with: what the policy imposes, nothing else (a relay
    token carries the full config issuance computed instead)."""
    if policy is None:
        return None
    config: dict[str, Any] = {}
    if policy.instructions_prefix:
        config["instructions"] = policy.instructions_prefix
    if policy.allowed_voices:
        config["audio"] = {"output": {"voice": str(policy.allowed_voices[0])}}
    if policy.max_output_tokens_ceiling:
        config["max_output_tokens"] = policy.max_output_tokens_ceiling
    return {"type": "realtime", **config} if config else None


def quota_message(metrics: tuple[str, ...], *, for_key: bool = False) -> str:
    """Why a session stops or is refused for quota, e.g. for a cutoff's `error` event."""
    scope = " for this API key" if for_key else ""
    return " ".join(f"{QUOTA_MESSAGES[Metric(m)]}{scope}." for m in metrics)


def _shortest(*seconds: int | None) -> int | None:
    values = [s for s in seconds if s]
    return min(values) if values else None


# --- Opening: the handshake --------------------------------------------------------------------


@dataclass(frozen=True)
class RelayGrant:
    """Everything a consumer needs to run an accepted session (no ORM objects cross to async code)."""

    session_id: str
    tenant_id: int
    api_key_id: int | None
    client_secret_id: str | None
    model: str
    session_config: dict[str, Any] | None
    rules: SessionRules
    max_session_seconds: int | None
    cost_ceiling_usd: Decimal | None
    connector: UpstreamConnector

    @property
    def groups(self) -> tuple[str, ...]:
        groups = [GROUP_TENANT.format(self.tenant_id), GROUP_SESSION.format(self.session_id)]
        if self.api_key_id is not None:
            groups.append(GROUP_KEY.format(self.api_key_id))
        if self.client_secret_id is not None:
            groups.append(GROUP_SECRET.format(self.client_secret_id))
        return tuple(groups)


def _refuse_if_used_up(tenant: Tenant, api_key: ApiKey | None, limits: EffectiveLimits) -> None:
    """A tenant (or key) whose monthly tokens, cost or audio are used up gets no new session."""
    for metric in MONTHLY_METRICS:
        limit = tenant_metric_limit(metric, limits)
        if limit is not None and quota_used(tenant=tenant, metric=metric) >= limit:
            raise QuotaExceeded(quota_message((metric,)), code="insufficient_quota")
        key_limit = key_metric_limit(metric, api_key)
        if key_limit is not None and quota_used(tenant=tenant, metric=metric, api_key=api_key) >= key_limit:
            raise QuotaExceeded(quota_message((metric,), for_key=True), code="insufficient_quota")


def relay_session_open(
    *, credential: str | None, model: str | None, client_ip: str | None = None, channel_name: str = ""
) -> RelayGrant:
    """Authenticate a realtime handshake and open its session, or raise the refusal (audited).

    Refusals, in order: no credential → 401 missing_api_key; malformed or unknown → 401
    invalid_api_key; API key revoked/expired → 401; relay token revoked/expired/used → 401
    (tokens/redemption.py); tenant suspended → 403 tenant_suspended; key without realtime:connect
    → 403 insufficient_scope; no model → 400; model not allowed by the tenant's policy (or not the
    token's) → 403 model_not_allowed; monthly quota used up → 429 insufficient_quota; concurrent
    sessions full → 429 concurrent_session_limit. Redeeming a single-use token, reserving the
    concurrency slot, creating the session and its audit row are one transaction: a refusal after
    redemption gives the token back."""
    try:
        return _open(credential=credential, model=model, client_ip=client_ip, channel_name=channel_name)
    except ApplicationError as exc:
        _audit_refusal(exc, credential=credential, model=model, client_ip=client_ip)
        raise


def _open(
    *, credential: str | None, model: str | None, client_ip: str | None, channel_name: str
) -> RelayGrant:
    if credential is None:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE, code="missing_api_key")
    parsed = keys.parse(credential)
    if parsed is None:
        raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
    now = timezone.now()
    with transaction.atomic():
        secret: ClientSecret | None = None
        if parsed.key_type is keys.KeyType.RELAY_TOKEN:
            secret = relay_token_redeem(raw=credential, now=now)
            tenant, api_key = secret.tenant, secret.api_key
            if secret.model and model and model != secret.model:
                raise PermissionDenied(
                    f"This relay token was issued for model '{secret.model}', not '{model}'.",
                    code="model_not_allowed",
                    param="model",
                )
            model = secret.model or model
        else:
            principal = api_key_authenticate(credential, now=now)
            principal.require_scope(Scope.REALTIME_CONNECT)
            tenant, api_key = principal.tenant, principal.api_key
        if not model:
            raise BadRequest(
                "Missing required parameter: 'model'.", code="missing_required_parameter", param="model"
            )
        policy = SessionPolicy.objects.filter(tenant=tenant).first()
        rules = session_rules_for(policy)
        if not rules.model_allowed(model):
            raise PermissionDenied(
                f"The model '{model}' is not allowed for this tenant.",
                code="model_not_allowed",
                param="model",
            )
        policy_seconds = policy.max_session_seconds if policy is not None else None
        limits = tenant_limits(tenant=tenant)
        _refuse_if_used_up(tenant, api_key, limits)
        reservation = quota_reserve(
            tenant=tenant, metric=Metric.SESSIONS, api_key=api_key, limits=limits, now=now
        )
        if secret is not None:
            config = dict(secret.session_config or {})
            config.setdefault("type", "realtime")
            session_config: dict[str, Any] | None = config
            max_seconds = _shortest(secret.max_session_seconds, policy_seconds, limits.max_session_seconds)
            ceiling = (
                secret.cost_ceiling_usd
                if secret.cost_ceiling_usd is not None
                else (policy.session_cost_ceiling_usd if policy else None)
            )
        else:
            session_config = policy_session_config(policy)
            max_seconds = _shortest(policy_seconds, limits.max_session_seconds)
            ceiling = policy.session_cost_ceiling_usd if policy else None
        session = RealtimeSession.objects.create(
            tenant=tenant,
            api_key=api_key,
            client_secret=secret,
            credential=(
                RealtimeSession.Credential.RELAY_TOKEN if secret else RealtimeSession.Credential.API_KEY
            ),
            client_ip=client_ip,
            slot_key_held=reservation.api_key_id is not None,
            model=model[:100],
            channel_name=channel_name[:200],
            started_at=now,
            last_seen_at=now,
        )
        audit_record(
            tenant=tenant,
            actor=Actor.for_api_key(api_key, ip=client_ip) if api_key else Actor.system("relay"),
            action="session.opened",
            target=session,
            details={
                "model": session.model,
                "credential": session.credential,
                "client_secret_id": secret.pk if secret else None,
                "max_session_seconds": max_seconds,
            },
        )
    logger.info("relay session opened session=%s tenant=%s model=%s", session.pk, tenant.pk, session.model)
    return RelayGrant(
        session_id=session.pk,
        tenant_id=tenant.pk,
        api_key_id=api_key.pk if api_key else None,
        client_secret_id=secret.pk if secret else None,
        model=session.model,
        session_config=session_config,
        rules=rules,
        max_session_seconds=max_seconds,
        cost_ceiling_usd=ceiling,
        connector=upstream_connector_for(tenant),
    )


def _identify(credential: str | None, client_ip: str | None) -> tuple[Tenant | None, Actor, dict[str, Any]]:
    """Whose credential a refused handshake presented, when it is a real one (so the refusal lands
    in that tenant's audit trail); an anonymous actor otherwise."""
    anonymous = Actor(kind="system", id="", label="unauthenticated client", ip=client_ip)
    parsed = keys.parse(credential) if credential else None
    if credential is None or parsed is None:
        return None, anonymous, {"credential": "none" if credential is None else "malformed"}
    if parsed.key_type is keys.KeyType.RELAY_TOKEN:
        secret = relay_token_find(credential)
        if secret is None:
            return None, anonymous, {"credential": "relay_token"}
        actor = Actor.for_api_key(secret.api_key, ip=client_ip) if secret.api_key else anonymous
        return secret.tenant, actor, {"credential": "relay_token", "client_secret_id": secret.pk}
    api_key = ApiKey.objects.select_related("tenant").filter(prefix=parsed.prefix).first()
    if api_key is None or not hmac.compare_digest(api_key.fingerprint, keys.fingerprint(credential)):
        return None, anonymous, {"credential": "api_key"}
    return (
        api_key.tenant,
        Actor.for_api_key(api_key, ip=client_ip),
        {"credential": "api_key", "prefix": api_key.prefix},
    )


def _audit_refusal(
    exc: ApplicationError, *, credential: str | None, model: str | None, client_ip: str | None
) -> None:
    try:
        tenant, actor, who = _identify(credential, client_ip)
        audit_record(
            tenant=tenant,
            actor=actor,
            action="session.refused",
            target_type="relay.realtimesession",
            details={"status": exc.status, "code": exc.code, "model": (model or "")[:100], **who},
        )
    except Exception:
        logger.exception("could not audit a refused relay handshake")
    logger.info("relay handshake refused status=%s code=%s", exc.status, exc.code)


# --- While it runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterOutcome:
    recorded: bool  # False: this response was metered before (a replay)
    session_cost_usd: Decimal
    tenant_exhausted: tuple[str, ...]  # monthly metrics the tenant has now used up
    key_exhausted: tuple[str, ...]  # ... that only the session's API key has used up


def _exhausted(
    tenant: Tenant, api_key: ApiKey | None, limits: EffectiveLimits, pending_audio_ms: int = 0
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    tenant_hits: list[str] = []
    key_hits: list[str] = []
    for metric in MONTHLY_METRICS:
        extra = pending_audio_ms if metric == Metric.AUDIO_MS else 0
        limit = tenant_metric_limit(metric, limits)
        if limit is not None and quota_used(tenant=tenant, metric=metric) + extra >= limit:
            tenant_hits.append(metric)
            continue
        key_limit = key_metric_limit(metric, api_key)
        if (
            key_limit is not None
            and quota_used(tenant=tenant, metric=metric, api_key=api_key) + extra >= key_limit
        ):
            key_hits.append(metric)
    return tuple(tenant_hits), tuple(key_hits)


def relay_session_meter(
    *,
    session_id: str,
    response_id: str,
    usage: dict[str, Any] | None,
    audio_in_ms: int = 0,
    audio_out_ms: int = 0,
) -> MeterOutcome:
    """Write one `response.done` into the usage ledger (once per session and response id), with
    its cost and the audio streamed since the last one, and charge the monthly counters now."""
    session = RealtimeSession.objects.select_related("tenant", "api_key").get(pk=session_id)
    tokens = TokenUsage.from_openai(usage)
    with transaction.atomic():
        recorded = usage_record(
            tenant=session.tenant,
            kind=UsageEvent.Kind.RESPONSE,
            natural_key=f"resp:{session.pk}:{response_id}",
            api_key=session.api_key,
            model=session.model,
            tokens=tokens,
            audio_in_ms=audio_in_ms,
            audio_out_ms=audio_out_ms,
            session_id=session.pk,
            client_secret_id=session.client_secret_id,
        )
        if recorded.created:
            event = recorded.event
            RealtimeSession.objects.filter(pk=session.pk).update(
                input_tokens=F("input_tokens")
                + event.input_text_tokens
                + event.input_audio_tokens
                + event.input_image_tokens,
                output_tokens=F("output_tokens") + event.output_text_tokens + event.output_audio_tokens,
                cost_usd=F("cost_usd") + event.cost_usd,
            )
    cost = RealtimeSession.objects.filter(pk=session.pk).values_list("cost_usd", flat=True)[0]
    tenant_hits: tuple[str, ...] = ()
    key_hits: tuple[str, ...] = ()
    if recorded.outcome.exhausted:
        tenant_hits, key_hits = _exhausted(
            session.tenant, session.api_key, tenant_limits(tenant=session.tenant)
        )
    return MeterOutcome(recorded.created, Decimal(cost), tenant_hits, key_hits)


@dataclass(frozen=True)
class HeartbeatOutcome:
    active: bool  # False: the row was ended elsewhere (the stale sweep)
    revoked: str | None  # an EndReason when the credential or tenant no longer allows the session
    tenant_exhausted: tuple[str, ...]
    key_exhausted: tuple[str, ...]


def relay_session_heartbeat(
    *,
    session_id: str,
    frames_in: int,
    frames_out: int,
    bytes_in: int,
    bytes_out: int,
    audio_in_ms: int,
    audio_out_ms: int,
    pending_audio_ms: int = 0,
    upstream_session_id: str = "",
) -> HeartbeatOutcome:
    """Keep `last_seen_at` fresh (the stale-session sweep ends rows it stops moving), store the
    live counters, and check what a missed kill-switch message would have said: credential
    revoked, tenant suspended, monthly quota used up (the audio not charged yet included)."""
    now = timezone.now()
    updated = RealtimeSession.objects.filter(pk=session_id, status=RealtimeSession.Status.ACTIVE).update(
        last_seen_at=now,
        frames_in=frames_in,
        frames_out=frames_out,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        audio_in_ms=audio_in_ms,
        audio_out_ms=audio_out_ms,
        upstream_session_id=upstream_session_id[:64],
    )
    if not updated:
        return HeartbeatOutcome(False, None, (), ())
    session = RealtimeSession.objects.select_related("tenant", "api_key", "client_secret").get(pk=session_id)
    revoked = None
    if not session.tenant.is_active:
        revoked = EndReason.TENANT_SUSPENDED
    elif session.api_key is not None and session.api_key.status_at(now) != "active":
        revoked = EndReason.KEY_REVOKED
    elif session.client_secret is not None and (
        session.client_secret.revoked_at is not None
        or session.client_secret.status == ClientSecret.Status.REVOKED
    ):
        revoked = EndReason.SECRET_REVOKED
    if revoked:
        return HeartbeatOutcome(True, revoked, (), ())
    tenant_hits, key_hits = _exhausted(
        session.tenant, session.api_key, tenant_limits(tenant=session.tenant), pending_audio_ms
    )
    return HeartbeatOutcome(True, None, tenant_hits, key_hits)


# --- Ending -------------------------------------------------------------------------------------


def _release_slot(session: RealtimeSession) -> None:
    quota_release(
        reservation=Reservation(
            tenant_id=session.tenant_id,
            api_key_id=session.api_key_id if session.slot_key_held else None,
            metric=Metric.SESSIONS,
            amount=1,
            period_start=NO_PERIOD,
        )
    )


def relay_session_end(
    *,
    session_id: str,
    reason: str,
    close_code: int | None,
    frames_in: int = 0,
    frames_out: int = 0,
    bytes_in: int = 0,
    bytes_out: int = 0,
    audio_in_ms_total: int = 0,
    audio_out_ms_total: int = 0,
    audio_in_ms: int = 0,
    audio_out_ms: int = 0,
    upstream_session_id: str = "",
) -> RealtimeSession:
    """End a session: final counters, slot released (by whoever ends the row, once), the end
    recorded (`session:<id>`, once), the audio not yet charged with a response charged now
    (`audio:<id>`, once), and `session.ended` audited. Safe to call twice."""
    now = timezone.now()
    stats = {
        "frames_in": frames_in,
        "frames_out": frames_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "audio_in_ms": audio_in_ms_total,
        "audio_out_ms": audio_out_ms_total,
        "upstream_session_id": upstream_session_id[:64],
    }
    with transaction.atomic():
        ended = RealtimeSession.objects.filter(pk=session_id, status=RealtimeSession.Status.ACTIVE).update(
            status=RealtimeSession.Status.ENDED,
            ended_at=now,
            last_seen_at=now,
            end_reason=reason[:32],
            close_code=close_code,
            **stats,
        )
        session = RealtimeSession.objects.select_related("tenant", "api_key").get(pk=session_id)
        if not ended:
            # The stale sweep ended it first and released its slot; keep the real counters.
            RealtimeSession.objects.filter(pk=session_id).update(**stats)
        # The end of the session (counted once, whoever ends it) and the audio it streamed after
        # its last response (only the relay knows it) are separate facts: if the stale sweep
        # ended the row first, its `session:` row must not swallow this process's audio.
        for kind, natural_key, audio in (
            (UsageEvent.Kind.SESSION_ENDED, f"session:{session.pk}", (0, 0)),
            (UsageEvent.Kind.AUDIO, f"audio:{session.pk}", (audio_in_ms, audio_out_ms)),
        ):
            if kind == UsageEvent.Kind.AUDIO and not any(audio):
                continue
            usage_record(
                tenant=session.tenant,
                kind=kind,
                natural_key=natural_key,
                api_key=session.api_key,
                model=session.model,
                audio_in_ms=audio[0],
                audio_out_ms=audio[1],
                session_id=session.pk,
                client_secret_id=session.client_secret_id,
                occurred_at=now,
            )
        if ended:
            _release_slot(session)
            audit_record(
                tenant=session.tenant,
                actor=Actor.system("relay"),
                action="session.ended",
                target=session,
                details={
                    "reason": session.end_reason,
                    "close_code": close_code,
                    "duration_seconds": round((now - session.started_at).total_seconds(), 3),
                    "frames_in": frames_in,
                    "frames_out": frames_out,
                    "audio_in_ms": audio_in_ms_total,
                    "audio_out_ms": audio_out_ms_total,
                    "input_tokens": session.input_tokens,
                    "output_tokens": session.output_tokens,
                    "cost_usd": str(session.cost_usd),
                },
            )
    return session


# --- Kill switch (CONTRACTS §4) -----------------------------------------------------------------


def relay_terminate_sessions(
    *,
    tenant_id: int,
    api_key_id: int | None = None,
    client_secret_id: str | None = None,
    session_id: str | None = None,
    reason: str,
) -> int:
    """Close live sessions, wherever they run: one control message to the most specific group
    (session, relay token, API key, else the whole tenant) over the channel layer. Returns how
    many active sessions match. Sync, and safe in `transaction.on_commit`: a channel-layer
    failure is logged, not raised (the heartbeat finds revoked credentials within seconds anyway).
    Reasons with their own message: key_revoked, secret_revoked, tenant_suspended, terminated,
    quota_exceeded."""
    sessions = RealtimeSession.objects.filter(tenant_id=tenant_id, status=RealtimeSession.Status.ACTIVE)
    if api_key_id is not None:
        sessions = sessions.filter(api_key_id=api_key_id)
    if client_secret_id is not None:
        sessions = sessions.filter(client_secret_id=client_secret_id)
    if session_id is not None:
        sessions = sessions.filter(pk=session_id)
    if session_id is not None:
        group = GROUP_SESSION.format(session_id)
    elif client_secret_id is not None:
        group = GROUP_SECRET.format(client_secret_id)
    elif api_key_id is not None:
        group = GROUP_KEY.format(api_key_id)
    else:
        group = GROUP_TENANT.format(tenant_id)
    count = sessions.count()
    layer = get_channel_layer()
    if layer is not None:
        try:
            async_to_sync(layer.group_send)(
                group, {"type": TERMINATE, "reason": reason[:32], "tenant_id": tenant_id}
            )
        except Exception:
            logger.exception("kill switch message failed tenant=%s group=%s", tenant_id, group)
    logger.info("relay terminate tenant=%s group=%s reason=%s active=%s", tenant_id, group, reason, count)
    return count


@transaction.atomic
def relay_session_terminate(*, session: RealtimeSession, actor: Actor) -> RealtimeSession:
    """An operator (API or console) terminates one session."""
    audit_record(
        tenant=session.tenant,
        actor=actor,
        action="session.terminated",
        target=session,
        details={"status": session.status},
    )
    if session.status == RealtimeSession.Status.ACTIVE:
        tenant_id, session_id = session.tenant_id, session.pk
        transaction.on_commit(
            lambda: relay_terminate_sessions(
                tenant_id=tenant_id, session_id=session_id, reason=EndReason.TERMINATED
            )
        )
    return session


@transaction.atomic
def relay_sessions_terminate_all(*, tenant: Tenant, actor: Actor, api_key_id: int | None = None) -> int:
    """An operator terminates every live session of the tenant (or of one of its keys)."""
    sessions = RealtimeSession.objects.filter(tenant=tenant, status=RealtimeSession.Status.ACTIVE)
    if api_key_id is not None:
        sessions = sessions.filter(api_key_id=api_key_id)
    count = sessions.count()
    audit_record(
        tenant=tenant,
        actor=actor,
        action="session.terminated",
        target_type="relay.realtimesession",
        details={
            "scope": "api_key" if api_key_id is not None else "tenant",
            "api_key_id": api_key_id,
            "active": count,
        },
    )
    tenant_id = tenant.pk
    transaction.on_commit(
        lambda: relay_terminate_sessions(
            tenant_id=tenant_id, api_key_id=api_key_id, reason=EndReason.TERMINATED
        )
    )
    return count
