"""Writes of client secrets: issuance (both kinds), revocation, the expiry sweep.

Issuance runs in phases so the sync DRF view and the async fast path (`tokens/asgi.py`) share
every step and differ only in how they wait for OpenAI:

    client_secret_issue_start()          auth'd key → limits, rate limit, validation, idempotency,
                                         policy; relay kind: reserve + mint + record in ONE
                                         transaction, done. Upstream kind: reserve quota (own
                                         transaction) and hand back an UpstreamPending.
    ... the caller calls OpenAI, outside any transaction ...
    client_secret_issue_upstream_succeeded()   record + audit + idempotency, one transaction
    client_secret_issue_upstream_failed()      release quota and key, audit, OpenAI-shaped error

The response body is built here, as bytes, so an idempotent replay returns exactly those bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform.context import current_request_id
from realtime_platform.crypto import keyed_digest
from realtime_platform.errors import ApplicationError, BadRequest, QuotaExceeded, upstream_error_to_api_error
from tenants import keys
from tenants.auth import KeyPrincipal
from tokens.idempotency import (
    Claim,
    Replay,
    idempotency_claim,
    idempotency_complete,
    idempotency_key_from_header,
    idempotency_release,
    request_fingerprint,
)
from tokens.models import ClientSecret
from tokens.openai_schema import parse_client_secret_request, request_as_dict
from tokens.policy import IssuancePlan, apply_policy, session_object
from tokens.ratelimit import rate_limit_check
from tokens.selectors import IssuanceContext, issuance_context
from upstream.client import UpstreamClient, upstream_client_for
from upstream.errors import UpstreamError
from upstream.types import ClientSecretResult
from usage.models import Metric, UsageEvent
from usage.services import Reservation, quota_release, quota_reserve, usage_record

logger = logging.getLogger(__name__)

ENDPOINT_PATH = "/v1/realtime/client_secrets"


@dataclass(frozen=True)
class Issued:
    """A finished answer: status, the exact body bytes, and extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    client_secret_id: str | None = None
    replayed: bool = False


@dataclass(frozen=True)
class UpstreamPending:
    """Everything decided before calling OpenAI; the quota is already reserved."""

    principal: KeyPrincipal
    plan: IssuancePlan
    reservation: Reservation
    claim: Claim | None
    ip: str | None
    headers: dict[str, str]
    client: UpstreamClient


def _actor(principal: KeyPrincipal, ip: str | None) -> Actor:
    return Actor.for_api_key(principal.api_key, ip=ip)


def _with_headers(exc: ApplicationError, headers: dict[str, str]) -> ApplicationError:
    for name, value in headers.items():
        exc.headers.setdefault(name, value)
    return exc


def _audit_failure(
    principal: KeyPrincipal, ip: str | None, *, reason: str, error: ApplicationError, **details: Any
) -> None:
    audit_record(
        tenant=principal.tenant,
        actor=_actor(principal, ip),
        action="secret.failed",
        target_type="tokens.clientsecret",
        details={
            "reason": reason,
            "status": error.status,
            "code": error.code,
            "param": error.param,
            "key_prefix": principal.api_key.prefix,
            **details,
        },
    )


def _expires_at(now: datetime, ttl_seconds: int) -> datetime:
    return (now + timedelta(seconds=ttl_seconds)).replace(microsecond=0)


def _issued_details(principal: KeyPrincipal, secret: ClientSecret, plan: IssuancePlan) -> dict[str, Any]:
    return {
        "kind": secret.kind,
        "model": secret.model,
        "session_type": plan.session.get("type"),
        "ttl_seconds": plan.ttl_seconds,
        "ttl_requested": plan.ttl_requested,
        "expires_at": secret.expires_at.isoformat(),
        "single_use": secret.single_use,
        "max_session_seconds": secret.max_session_seconds,
        "cost_ceiling_usd": None if secret.cost_ceiling_usd is None else str(secret.cost_ceiling_usd),
        "key_prefix": principal.api_key.prefix,
        "last_four": secret.last_four,
        "policy_adjustments": list(plan.adjustments),
    }


def _record_issued(principal: KeyPrincipal, secret: ClientSecret, plan: IssuancePlan, ip: str | None) -> None:
    """The ledger row and the audit row, in the caller's transaction."""
    usage_record(
        tenant=principal.tenant,
        kind=UsageEvent.Kind.SECRET_ISSUED,
        natural_key=f"secret:{secret.pk}",
        api_key=principal.api_key,
        model=secret.model,
        client_secret_id=secret.pk,
        occurred_at=secret.created_at,
        charge=False,  # the daily secret count was reserved up front
    )
    audit_record(
        tenant=principal.tenant,
        actor=_actor(principal, ip),
        action="secret.issued",
        target=secret,
        details=_issued_details(principal, secret, plan),
    )


def _response_bytes(value: str, expires_at: int, session: dict[str, Any]) -> bytes:
    return orjson.dumps({"value": value, "expires_at": expires_at, "session": session})


# --- Phase 1 ----------------------------------------------------------------------------------


def client_secret_issue_start(
    *,
    principal: KeyPrincipal,
    body: bytes,
    idempotency_key: str | None = None,
    ip: str | None = None,
    now: datetime | None = None,
    upstream_http: httpx.AsyncClient | None = None,
) -> Issued | UpstreamPending:
    """`upstream_http`: the long-lived AsyncClient an async caller will await OpenAI with."""
    principal.require_scope("secrets:create")
    context = issuance_context(tenant=principal.tenant, api_key=principal.api_key)
    rate = rate_limit_check(
        tenant_id=principal.tenant.pk,
        api_key_id=principal.api_key.pk,
        tenant_per_minute=context.limits.requests_per_minute,
    )
    headers = rate.headers() if rate is not None else {}
    try:
        return _start(
            principal, context, body, idempotency_key, ip, headers, now or timezone.now(), upstream_http
        )
    except ApplicationError as exc:
        raise _with_headers(exc, headers) from None


def _start(
    principal: KeyPrincipal,
    context: IssuanceContext,
    body: bytes,
    idempotency_key: str | None,
    ip: str | None,
    headers: dict[str, str],
    now: datetime,
    upstream_http: httpx.AsyncClient | None,
) -> Issued | UpstreamPending:
    key = idempotency_key_from_header(idempotency_key)
    request = request_as_dict(parse_client_secret_request(body))
    claim: Claim | None = None
    if key is not None:
        found = idempotency_claim(
            api_key=principal.api_key,
            key=key,
            request_hash=request_fingerprint("POST", ENDPOINT_PATH, request),
        )
        if isinstance(found, Replay):
            return Issued(
                status=found.status,
                body=found.body,
                headers={**headers, "Idempotent-Replayed": "true"},
                replayed=True,
            )
        claim = found
    try:
        try:
            plan = apply_policy(request, context.policy, kind=context.policy.secret_kind)
        except BadRequest as exc:
            with transaction.atomic():
                _audit_failure(principal, ip, reason="policy", error=exc)
            raise
        if plan.kind == ClientSecret.Kind.RELAY:
            return _mint_relay(principal, context, plan, claim, ip, headers, now)
        client = _upstream_client(principal, plan, ip, upstream_http)
        reservation = _reserve(principal, context, plan, ip, now)
    except BaseException:
        if claim is not None:
            idempotency_release(claim=claim)
        raise
    return UpstreamPending(
        principal=principal,
        plan=plan,
        reservation=reservation,
        claim=claim,
        ip=ip,
        headers=headers,
        client=client,
    )


def _upstream_client(
    principal: KeyPrincipal, plan: IssuancePlan, ip: str | None, http: httpx.AsyncClient | None
) -> UpstreamClient:
    """The OpenAI client for this tenant, before any quota is taken: a tenant set to use its own
    key without one stored (or a platform without a key) fails here, audited."""
    try:
        return upstream_client_for(principal.tenant, http=http)
    except UpstreamError as exc:
        error = upstream_error_to_api_error(exc)
        with transaction.atomic():
            _audit_failure(
                principal, ip, reason="upstream", error=error, kind=plan.kind, upstream_code=exc.code
            )
        raise error from None


def _reserve(
    principal: KeyPrincipal, context: IssuanceContext, plan: IssuancePlan, ip: str | None, now: datetime
) -> Reservation:
    try:
        return quota_reserve(
            tenant=principal.tenant,
            metric=Metric.SECRETS,
            api_key=principal.api_key,
            limits=context.limits,
            now=now,
        )
    except QuotaExceeded as exc:
        exc.headers.setdefault("x-should-retry", "false")  # not before the day turns over
        with transaction.atomic():
            _audit_failure(principal, ip, reason="quota", error=exc, kind=plan.kind)
        raise


def _mint_relay(
    principal: KeyPrincipal,
    context: IssuanceContext,
    plan: IssuancePlan,
    claim: Claim | None,
    ip: str | None,
    headers: dict[str, str],
    now: datetime,
) -> Issued:
    """Reserve, mint, record and complete the idempotency key in one transaction: all or nothing."""
    generated = keys.generate(keys.KeyType.RELAY_TOKEN)
    try:
        with transaction.atomic():
            secret = ClientSecret.objects.create(
                tenant=principal.tenant,
                api_key=principal.api_key,
                kind=ClientSecret.Kind.RELAY,
                lookup_prefix=generated.prefix,
                fingerprint=generated.fingerprint,
                last_four=generated.last_four,
                model=plan.model,
                session_config=plan.session,
                single_use=plan.single_use,
                max_session_seconds=plan.max_session_seconds,
                cost_ceiling_usd=plan.cost_ceiling_usd,
                request_id=_request_id(),
                created_at=now,
                expires_at=_expires_at(now, plan.ttl_seconds),
            )
            _record_issued(principal, secret, plan, ip)
            # The hot rows (the tenant's quota counter, its audit chain head) are locked last, so
            # they stay locked for as short a time as possible before the commit.
            quota_reserve(
                tenant=principal.tenant,
                metric=Metric.SECRETS,
                api_key=principal.api_key,
                limits=context.limits,
                now=now,
            )
            body = _response_bytes(
                generated.plaintext,
                int(secret.expires_at.timestamp()),
                session_object(plan.session, session_id=secret.pk),
            )
            if claim is not None:
                idempotency_complete(claim=claim, status=200, body=body, client_secret_id=secret.pk)
    except QuotaExceeded as exc:
        exc.headers.setdefault("x-should-retry", "false")
        with transaction.atomic():
            _audit_failure(principal, ip, reason="quota", error=exc, kind=plan.kind)
        raise
    logger.info("client secret issued tenant=%s secret=%s kind=relay", principal.tenant.pk, secret.pk)
    return Issued(status=200, body=body, headers=headers, client_secret_id=secret.pk)


def _request_id() -> str:
    return (current_request_id() or "")[:128]


# --- Phase 2 (upstream kind) ------------------------------------------------------------------


def client_secret_issue_upstream_succeeded(pending: UpstreamPending, result: ClientSecretResult) -> Issued:
    principal, plan = pending.principal, pending.plan
    now = timezone.now()
    try:
        with transaction.atomic():
            secret = ClientSecret.objects.create(
                tenant=principal.tenant,
                api_key=principal.api_key,
                kind=ClientSecret.Kind.UPSTREAM,
                fingerprint=keyed_digest(result.value, purpose="openai-ek"),
                last_four=result.value[-4:],
                model=str(result.session.get("model") or plan.model),
                session_config=plan.session,
                single_use=False,  # an OpenAI ephemeral key opens any number of sessions until it expires
                upstream_session_id=str(result.session.get("id") or "")[:64],
                request_id=_request_id(),
                created_at=now,
                expires_at=datetime.fromtimestamp(result.expires_at, tz=UTC),
            )
            _record_issued(principal, secret, plan, pending.ip)
            body = _response_bytes(result.value, result.expires_at, result.session)
            if pending.claim is not None:
                idempotency_complete(claim=pending.claim, status=200, body=body, client_secret_id=secret.pk)
    except BaseException:
        client_secret_issue_abandon(pending)
        raise
    logger.info("client secret issued tenant=%s secret=%s kind=upstream", principal.tenant.pk, secret.pk)
    return Issued(status=200, body=body, headers=pending.headers, client_secret_id=secret.pk)


def client_secret_issue_upstream_failed(pending: UpstreamPending, error: UpstreamError) -> ApplicationError:
    """OpenAI refused or failed (after the client's own retries): give the quota and the key back,
    audit it, and return the OpenAI-shaped error to answer with."""
    client_secret_issue_abandon(pending)
    api_error = _with_headers(upstream_error_to_api_error(error), pending.headers)
    with transaction.atomic():
        _audit_failure(
            pending.principal,
            pending.ip,
            reason="upstream",
            error=api_error,
            kind=pending.plan.kind,
            upstream_status=error.status,
            upstream_code=error.code,
            upstream_request_id=error.request_id,
        )
    logger.warning(
        "upstream client secret failed tenant=%s status=%s code=%s",
        pending.principal.tenant.pk,
        error.status,
        error.code,
    )
    return api_error


def client_secret_issue_abandon(pending: UpstreamPending) -> None:
    """Undo phase 1 (the request died before it could finish): release quota and key."""
    quota_release(reservation=pending.reservation)
    if pending.claim is not None:
        idempotency_release(claim=pending.claim)


def client_secret_issue(
    *, principal: KeyPrincipal, body: bytes, idempotency_key: str | None = None, ip: str | None = None
) -> Issued:
    """The whole issuance, synchronously (the DRF view; the fast path awaits OpenAI instead)."""
    started = client_secret_issue_start(
        principal=principal, body=body, idempotency_key=idempotency_key, ip=ip
    )
    if isinstance(started, Issued):
        return started
    from upstream.client import upstream_client_for
    from upstream.errors import UpstreamError

    try:
        result = upstream_client_for(principal.tenant).create_client_secret_sync(
            body=started.plan.upstream_body, request_id=_request_id() or None
        )
    except UpstreamError as exc:
        raise client_secret_issue_upstream_failed(started, exc) from None
    except BaseException:
        client_secret_issue_abandon(started)
        raise
    return client_secret_issue_upstream_succeeded(started, result)


# --- Revocation and expiry --------------------------------------------------------------------


@transaction.atomic
def client_secret_revoke(*, secret: ClientSecret, actor: Actor) -> ClientSecret:
    """Revoke a secret. Idempotent: revoking a revoked secret changes nothing and audits nothing.

    A revoked relay token can no longer open a session (redemption refuses it). An upstream
    (`ek_…`) secret is marked revoked here, but OpenAI offers no way to revoke its ephemeral
    keys: it stays usable at OpenAI until its `expires_at`, which is why relay is the default."""
    before = secret.status
    updated = (
        ClientSecret.objects.filter(pk=secret.pk)
        .exclude(status=ClientSecret.Status.REVOKED)
        .update(status=ClientSecret.Status.REVOKED, revoked_at=timezone.now())
    )
    secret.refresh_from_db(fields=["status", "revoked_at"])
    if not updated:
        return secret  # revoking twice is harmless, and retries rely on that
    audit_record(
        tenant=secret.tenant,
        actor=actor,
        action="secret.revoked",
        target=secret,
        details={"kind": secret.kind, "status_before": before, "last_four": secret.last_four},
    )
    logger.info("client secret revoked tenant=%s secret=%s", secret.tenant_id, secret.pk)
    if secret.kind == ClientSecret.Kind.RELAY:
        tenant_id, secret_id = secret.tenant_id, secret.pk

        def close_its_session() -> None:  # a live relayed session opened with it ends (kill switch)
            from relay.services import relay_terminate_sessions

            relay_terminate_sessions(tenant_id=tenant_id, client_secret_id=secret_id, reason="secret_revoked")

        transaction.on_commit(close_its_session)
    return secret


EXPIRE_BATCH = 50_000
# When at least this share of the table is due (a backlog after downtime), sweep it in physical
# block ranges: sequential, no index walk, no rescanning what earlier batches already did.
BLOCK_SWEEP_SHARE = 0.1

Progress = Callable[[int], None]


def client_secret_expire_due(*, now: datetime | None = None) -> int:
    """How many active secrets are past their expiry (for progress bars)."""
    now = now or timezone.now()
    return ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now).count()


def client_secret_expire_sweep(
    *,
    now: datetime | None = None,
    batch_size: int = EXPIRE_BATCH,
    progress: Progress | None = None,
) -> int:
    """Mark every active secret past its expiry as expired. Set-based: one conditional UPDATE per
    batch of up to about `batch_size` rows, each its own short transaction, so a million expired
    secrets never hold a million row locks in one transaction and a concurrent revocation waits
    at most one batch. Safe to run twice or concurrently: `status = 'active' AND expires_at <=
    now` is re-checked on every row as it is updated, so each row is expired once.

    Expiry is not audited row by row: it follows from `expires_at`, which the audit trail already
    has from `secret.issued`. Redemption checks `expires_at` itself, so correctness never waits
    for this sweep; it keeps `status` truthful for listings and the console."""
    now = now or timezone.now()
    total = 0
    if connection.vendor == "postgresql":
        total += _expire_backlog_by_blocks(now, batch_size, progress)
        total += _expire_batches_pg(now, batch_size, progress)
    else:
        total += _expire_batches(now, batch_size, progress)
    if total:
        logger.info("expired client secrets count=%s", total)
    return total


def _expire_batches(now: datetime, batch_size: int, progress: Progress | None) -> int:
    due = ClientSecret.objects.filter(status=ClientSecret.Status.ACTIVE, expires_at__lte=now)
    total = 0
    while True:
        with transaction.atomic():
            count = ClientSecret.objects.filter(
                pk__in=due.values("pk")[:batch_size], status=ClientSecret.Status.ACTIVE
            ).update(status=ClientSecret.Status.EXPIRED)
        total += count
        if progress is not None and count:
            progress(count)
        if count == 0:
            return total


TABLE = ClientSecret._meta.db_table
_DUE = "status = %s AND expires_at <= %s"


def _expire_batches_pg(now: datetime, batch_size: int, progress: Progress | None) -> int:
    """Batches picked through the (status, expires_at) index and updated by tuple id: a TID scan,
    whatever the planner guesses about the batch (an `id IN (subquery)` can turn into a hash join
    over the whole table)."""
    params: list[Any] = [ClientSecret.Status.ACTIVE, now]
    sql = (
        f"UPDATE {TABLE} SET status = %s WHERE ctid = ANY(ARRAY("  # noqa: S608  (constants only)
        f"SELECT ctid FROM {TABLE} WHERE {_DUE} LIMIT %s)) AND {_DUE}"
    )
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [ClientSecret.Status.EXPIRED, *params, batch_size, *params])
            count = int(cursor.rowcount)
        total += count
        if progress is not None and count:
            progress(count)
        if count == 0:
            return total


def _expire_backlog_by_blocks(now: datetime, batch_size: int, progress: Progress | None) -> int:
    """A large backlog, swept in ranges of physical blocks (TID range scans) holding about
    `batch_size` rows each. Rows a concurrent writer moved meanwhile are left to the index-driven
    batches that follow."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s) / current_setting('block_size')::int, c.reltuples, c.relpages "
            "FROM pg_class c WHERE c.oid = %s::regclass",
            [TABLE, TABLE],
        )
        blocks, reltuples, relpages = cursor.fetchone()
        if reltuples <= 0 or relpages <= 0:
            return 0  # never analysed: no basis for sizing block ranges; the index batches will do
        threshold = max(batch_size, int(max(reltuples, 0) * BLOCK_SWEEP_SHARE))
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} WHERE {_DUE} LIMIT %s) due",  # noqa: S608
            [ClientSecret.Status.ACTIVE, now, threshold],
        )
        if cursor.fetchone()[0] < threshold:
            return 0
    rows_per_block = max(1.0, reltuples / relpages)
    step = max(1, int(batch_size / rows_per_block))
    sql = f"UPDATE {TABLE} SET status = %s WHERE ctid >= %s::tid AND ctid < %s::tid AND {_DUE}"  # noqa: S608
    total = 0
    for start in range(0, int(blocks), step):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                sql,
                [
                    ClientSecret.Status.EXPIRED,
                    f"({start},0)",
                    f"({start + step},0)",
                    ClientSecret.Status.ACTIVE,
                    now,
                ],
            )
            count = int(cursor.rowcount)
        total += count
        if progress is not None and count:
            progress(count)
    return total
