"""Every write to the audit trail: the recorder, signed checkpoints, the retention purge.

Nothing else inserts, and nothing at all updates or deletes audit rows: the database refuses
UPDATE, DELETE and TRUNCATE on the table (migration 0003), except DELETE by the purge
below, which opens a transaction-local gate and may only remove rows that are past their
tenant's retention and covered by a signed purge checkpoint.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import F, Q, Subquery
from django.utils import timezone

from audit import signing
from audit.actors import Actor
from audit.chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    PLATFORM_CHAIN,
    VERSION_PREFIX,
    as_aware_datetime,
    canonical_bytes,
    canonical_json,
    canonical_timestamp,
    chain_for,
    compute_hash,
    field_bytes,
    field_payloads,
    normalize_details,
    row_fields,
)
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from realtime_platform.context import current_request_id
from realtime_platform.errors import BadRequest
from realtime_platform.redaction import redact, redact_text

if TYPE_CHECKING:
    from audit.verification import ChainReport
    from tenants.models import Tenant

logger = logging.getLogger(__name__)

__all__ = [
    "GENESIS_HASH",
    "HASHED_FIELDS",
    "PLATFORM_CHAIN",
    "PurgeResult",
    "audit_chains_verify",
    "audit_checkpoint_create",
    "audit_checkpoint_heads",
    "audit_purge_expired",
    "audit_record",
    "audit_retention_set",
    "canonical_bytes",
    "chain_for",
    "compute_hash",
    "row_fields",
]

_EVENT = AuditEvent._meta.db_table
_HEAD = AuditChainHead._meta.db_table
_INSERT_COLUMNS = (
    "chain",
    "seq",
    "tenant_id",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "ip",
    "details",
    "prev_hash",
    "hash",
)


def _now() -> datetime:
    """The recorder's clock (tests move it to make old rows)."""
    return timezone.now()


def _json_safe(details: dict[str, Any]) -> Any:
    # Decimals, datetimes and UUIDs become strings now, so the stored JSON and the hashed bytes
    # are the same thing when a verifier reads the row back.
    return json.loads(json.dumps(details, default=str))


def _normal_ip(ip: str | None) -> str | None:
    # Stored as the database will return it, so the hash matches on re-read.
    if not ip:
        return None
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    return AuditEvent._meta.get_field("ip").get_prep_value(ip)  # type: ignore[no-any-return]


def _text(value: str, limit: int) -> str:
    return redact_text(str(value)).replace("\x00", "\ufffd")[:limit]


def _advance_head(cursor: Any, chain: str, tenant_id: int | None) -> tuple[int, int, str, datetime | None]:
    """Take the next seq of `chain`: one UPDATE that also locks the head row until commit, so
    concurrent writers queue here and the chain cannot fork."""
    for _ in range(2):
        cursor.execute(
            f"UPDATE {_HEAD} SET seq = seq + 1 WHERE chain = %s RETURNING id, seq, hash, created_at",  # noqa: S608
            [chain],
        )
        row = cursor.fetchone()
        if row is not None:
            return (
                int(row[0]),
                int(row[1]),
                str(row[2]),
                as_aware_datetime(row[3]) if row[3] is not None else None,
            )
        cursor.execute(
            f"INSERT INTO {_HEAD} (chain, tenant_id, seq, hash) VALUES (%s, %s, 0, %s) "  # noqa: S608
            "ON CONFLICT (chain) DO NOTHING",
            [chain, tenant_id, GENESIS_HASH],
        )
    raise RuntimeError(f"audit chain head {chain!r} could not be created")


def _insert(cursor: Any, event: AuditEvent, head_id: int) -> int:
    ops = connection.ops
    values = [getattr(event, name) for name in _INSERT_COLUMNS]
    values[_INSERT_COLUMNS.index("created_at")] = ops.adapt_datetimefield_value(event.created_at)
    values[_INSERT_COLUMNS.index("details")] = canonical_json(event.details)
    columns = ", ".join(_INSERT_COLUMNS)
    placeholders = ", ".join("%s" for _ in _INSERT_COLUMNS)
    cursor.execute(
        f"INSERT INTO {_EVENT} ({columns}) VALUES ({placeholders}) RETURNING id",  # noqa: S608
        values,
    )
    event_id = int(cursor.fetchone()[0])
    cursor.execute(
        f"UPDATE {_HEAD} SET hash = %s, created_at = %s WHERE id = %s",  # noqa: S608
        [event.hash, values[_INSERT_COLUMNS.index("created_at")], head_id],
    )
    return event_id


def _append_generic(event: AuditEvent, now: datetime) -> None:
    """Lock and advance the head, hash in Python, insert, record the new head (SQLite)."""
    with connection.cursor() as cursor:
        head_id, event.seq, event.prev_hash, last_at = _advance_head(cursor, event.chain, event.tenant_id)
        event.created_at = max(now, last_at) if last_at is not None else now
        event.hash = compute_hash(row_fields(event))
        event.pk = _insert(cursor, event, head_id)


# One statement, one round trip: lock the head, take the next seq and a timestamp no earlier than
# the last one, hash the row (audit.chain's encoding: the bytes Python prepared, with prev_hash,
# seq and created_at spliced in as PostgreSQL's binary send functions encode them), insert it and
# move the head. The verifier re-hashes every row in Python, independently.
_PG_APPEND = f"""
WITH old AS (
    SELECT id, seq, hash, created_at FROM {_HEAD} WHERE chain = %(chain)s FOR UPDATE
), new AS (
    SELECT id, seq + 1 AS seq, hash AS prev_hash,
           GREATEST(%(now)s::timestamptz, created_at) AS created_at
    FROM old
), hashed AS (
    SELECT new.*, encode(sha256(
        %(prefix)s::bytea
        || int4send(octet_length(prev_hash)) || convert_to(prev_hash, 'UTF8')
        || int4send(8) || int8send(seq)
        || %(chain_tenant)s::bytea
        || int4send(8) || timestamptz_send(created_at)
        || %(rest)s::bytea
    ), 'hex') AS hash
    FROM new
), moved AS (
    UPDATE {_HEAD} AS head SET seq = hashed.seq, hash = hashed.hash, created_at = hashed.created_at
    FROM hashed WHERE head.id = hashed.id
)
INSERT INTO {_EVENT} (chain, seq, tenant_id, created_at, actor_type, actor_id, actor_label, action,
                      target_type, target_id, request_id, ip, details, prev_hash, hash)
SELECT %(chain)s, seq, %(tenant_id)s, created_at, %(actor_type)s, %(actor_id)s, %(actor_label)s,
       %(action)s, %(target_type)s, %(target_id)s, %(request_id)s, %(ip)s::inet, %(details)s,
       prev_hash, hash
FROM hashed
RETURNING id, seq, created_at, prev_hash, hash
"""  # noqa: S608


def _append_postgres(event: AuditEvent, now: datetime) -> None:
    import psycopg

    payloads = field_payloads({**row_fields(event), "prev_hash": "", "seq": 0, "created_at": now})
    fields = [field_bytes(p) for p in payloads]
    params: dict[str, Any] = {
        "chain": event.chain,
        "now": now,
        "prefix": VERSION_PREFIX,
        "chain_tenant": fields[2] + fields[3],
        "rest": b"".join(fields[5:]),
        "tenant_id": event.tenant_id,
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_label": event.actor_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "request_id": event.request_id,
        "ip": event.ip,
        "details": canonical_json(event.details),
    }
    connection.ensure_connection()
    raw = connection.connection
    if (
        settings.AUDIT_PREPARED_STATEMENTS
        and raw.prepare_threshold is None
        and not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    ):
        # Django turns prepared statements off (for transaction-pooling PgBouncer) and binds
        # parameters client-side, and client-side cursors never prepare: this lets the one
        # server-binding cursor below, and nothing else, prepare its statement.
        raw.prepare_threshold = 0
    # A server-binding cursor (the bytea parameters travel as they are), wrapped the way Django
    # wraps its own, so errors, execute wrappers and query logging behave as for any query.
    psycopg_cursor: Any = psycopg.Cursor(raw)
    wrapped = (
        connection.make_debug_cursor(psycopg_cursor)
        if connection.queries_logged
        else connection.make_cursor(psycopg_cursor)
    )
    with wrapped as cursor:
        for _ in range(2):
            cursor.execute(_PG_APPEND, params)
            row = cursor.fetchone()
            if row is not None:
                event.pk, event.seq, event.created_at, event.prev_hash, event.hash = row
                return
            cursor.execute(
                f"INSERT INTO {_HEAD} (chain, tenant_id, seq, hash) VALUES (%s, %s, 0, %s) "  # noqa: S608
                "ON CONFLICT (chain) DO NOTHING",
                [event.chain, event.tenant_id, GENESIS_HASH],
            )
    raise RuntimeError(f"audit chain head {event.chain!r} could not be created")


def audit_record(
    *,
    tenant: Tenant | None,
    actor: Actor,
    action: str,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Append one event to the tenant's chain, in the caller's transaction (so the fact and its
    record commit or roll back together; called outside a transaction, it makes its own).
    Secret-shaped values in `details` and in the text columns are masked first.

    The chain head row is locked until commit, so appends to one chain queue and it cannot
    fork; the timestamp never goes backwards within a chain. On PostgreSQL that is a single
    statement."""
    tenant_id = tenant.pk if tenant is not None else None
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
    chain = chain_for(tenant_id)
    event = AuditEvent(
        chain=chain,
        tenant_id=tenant_id,
        actor_type=_text(actor.kind, 16),
        actor_id=_text(actor.id, 64),
        actor_label=_text(actor.label, 200),
        action=_text(action, 64),
        target_type=_text(target_type, 64),
        target_id=_text(str(target_id), 64),
        request_id=_text(request_id or current_request_id() or "", 128),
        ip=_normal_ip(actor.ip),
        details=normalize_details(redact(_json_safe(details or {}))),
    )
    now = _now()
    if connection.vendor == "postgresql":
        # One statement is its own transaction, or part of the caller's.
        _append_postgres(event, now)
    else:
        # savepoint=False: inside a caller's transaction an error here must fail that
        # transaction anyway, so a savepoint's extra round trips would buy nothing.
        with transaction.atomic(savepoint=False):
            _append_generic(event, now)
    event._state.adding = False
    event._state.db = connection.alias
    return event


# --- Checkpoints ------------------------------------------------------------------------------


def audit_checkpoint_create(
    *, chain: str, kind: str = AuditCheckpoint.Kind.PERIODIC, seq: int | None = None
) -> AuditCheckpoint | None:
    """Sign "chain reached `seq` (default: its head) with this hash". Idempotent: the same
    checkpoint twice returns the existing one. None when there is nothing to sign, or when the
    head disagrees with the stored row (then the chain needs the verifier, not a signature)."""
    with transaction.atomic():
        # Locking the head serialises checkpoint writers of one chain, so `prev_signature`
        # links them in a single line.
        head = AuditChainHead.objects.select_for_update().filter(chain=chain).first()
        if head is None or head.seq == 0:
            return None
        target_seq = head.seq if seq is None else seq
        row_hash = (
            AuditEvent.objects.filter(chain=chain, seq=target_seq).values_list("hash", flat=True).first()
        )
        if row_hash is None or (seq is None and row_hash != head.hash):
            logger.error(
                "audit checkpoint refused chain=%s seq=%s: head and rows disagree", chain, target_seq
            )
            return None
        last = AuditCheckpoint.objects.filter(chain=chain).order_by("-id").first()
        existing = AuditCheckpoint.objects.filter(chain=chain, kind=kind, seq=target_seq).first()
        if existing is not None:
            return existing
        created_at = timezone.now()
        prev_signature = last.signature if last is not None else ""
        key_id, signature = signing.sign(
            signing.checkpoint_message(
                chain=chain,
                seq=target_seq,
                hash=row_hash,
                created_at=canonical_timestamp(created_at),
                kind=kind,
                prev_signature=prev_signature,
            )
        )
        return AuditCheckpoint.objects.create(
            chain=chain,
            tenant_id=head.tenant_id,
            seq=target_seq,
            hash=row_hash,
            created_at=created_at,
            kind=kind,
            key_id=key_id,
            prev_signature=prev_signature,
            signature=signature,
        )


def audit_checkpoint_heads() -> int:
    """Sign the head of every chain that grew since its newest checkpoint. Safe to run twice."""
    newest = AuditCheckpoint.objects.filter(chain=models.OuterRef("chain")).order_by("-seq").values("seq")[:1]
    chains = (
        AuditChainHead.objects.annotate(signed_seq=Subquery(newest))
        .filter(Q(signed_seq__isnull=True) | Q(seq__gt=F("signed_seq")), seq__gt=0)
        .values_list("chain", flat=True)
    )
    count = 0
    for chain in list(chains):
        if audit_checkpoint_create(chain=chain) is not None:
            count += 1
    if count:
        logger.info("audit checkpoints signed count=%s", count)
    return count


# --- Retention --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    chain: str
    tenant_id: int | None
    through_seq: int
    deleted: int
    cutoff: datetime


def _open_purge_gate(cursor: Any) -> None:
    """Let this transaction, and only it, delete expired rows (the triggers check the rest)."""
    if connection.vendor == "postgresql":
        cursor.execute("SELECT set_config('rtp.audit_purge', 'on', true)")
    else:
        cursor.execute("INSERT INTO audit_purge_gate (kind) VALUES ('purge')")


def _close_purge_gate(cursor: Any) -> None:
    if connection.vendor == "postgresql":
        cursor.execute("SELECT set_config('rtp.audit_purge', 'off', true)")
    else:
        cursor.execute("DELETE FROM audit_purge_gate WHERE kind = 'purge'")


def _purge_chain(
    *, chain: str, tenant: Tenant | None, cutoff: datetime, retention_days: int, batch_size: int
) -> PurgeResult | None:
    boundary = (
        AuditEvent.objects.filter(chain=chain, created_at__lt=cutoff)
        .order_by("-created_at", "-seq")
        .values_list("seq", flat=True)
        .first()
    )
    oldest = AuditEvent.objects.filter(chain=chain).order_by("seq").values_list("seq", flat=True).first()
    if boundary is None or oldest is None or oldest > boundary:
        return None
    # Sign the boundary first: if the purge stops halfway, the rows left below it still chain up
    # to a signed hash, and the verifier knows where the purged part ends.
    checkpoint = audit_checkpoint_create(chain=chain, kind=AuditCheckpoint.Kind.PURGE, seq=boundary)
    if checkpoint is None:
        logger.error("audit purge skipped chain=%s: boundary %s could not be signed", chain, boundary)
        return None
    deleted = 0
    low = oldest
    while low <= boundary:
        high = min(low + batch_size - 1, boundary)
        with transaction.atomic(), connection.cursor() as cursor:
            _open_purge_gate(cursor)
            count, _ = AuditEvent.objects.filter(chain=chain, seq__gte=low, seq__lte=high).delete()
            _close_purge_gate(cursor)
        deleted += count
        low = high + 1
    audit_record(
        tenant=tenant,
        actor=Actor.system("audit retention"),
        action="audit.purged",
        details={
            "through_seq": boundary,
            "rows": deleted,
            "cutoff": canonical_timestamp(cutoff),
            "retention_days": retention_days,
            "checkpoint_id": checkpoint.pk,
            "checkpoint_hash": checkpoint.hash,
        },
    )
    logger.info("audit purged chain=%s through_seq=%s rows=%s", chain, boundary, deleted)
    return PurgeResult(
        chain=chain,
        tenant_id=tenant.pk if tenant else None,
        through_seq=boundary,
        deleted=deleted,
        cutoff=cutoff,
    )


def audit_purge_expired(*, now: datetime | None = None, batch_size: int = 10_000) -> list[PurgeResult]:
    """Delete the rows of every chain older than its retention (the tenant's
    `audit_retention_days`; settings.AUDIT_PLATFORM_RETENTION_DAYS for the platform chain).
    Each chain first gets a signed purge checkpoint at the boundary, and each purge is itself
    audited (`audit.purged`). Safe to run twice or concurrently: a second run finds nothing.

    `now` may only be moved into the past: the database checks retention against its own
    clock, so a purge can never delete a row that is not yet expired."""
    from tenants.models import Tenant

    now = min(now or timezone.now(), timezone.now())
    # A little slack, so a database clock a few seconds behind ours never sees a row of the
    # boundary as still inside its retention.
    margin = timedelta(minutes=5)
    results: list[PurgeResult] = []
    for tenant in Tenant.objects.order_by("id").iterator():
        days = tenant.audit_retention_days
        result = _purge_chain(
            chain=chain_for(tenant.pk),
            tenant=tenant,
            cutoff=now - timedelta(days=days) - margin,
            retention_days=days,
            batch_size=batch_size,
        )
        if result is not None:
            results.append(result)
    days = settings.AUDIT_PLATFORM_RETENTION_DAYS
    result = _purge_chain(
        chain=PLATFORM_CHAIN,
        tenant=None,
        cutoff=now - timedelta(days=days) - margin,
        retention_days=days,
        batch_size=batch_size,
    )
    if result is not None:
        results.append(result)
    return results


@transaction.atomic
def audit_retention_set(*, tenant: Tenant, days: int, actor: Actor) -> Tenant:
    """Change how long the tenant's audit trail is kept (audited with before and after)."""
    from tenants.models import Tenant

    minimum, maximum = settings.AUDIT_RETENTION_MIN_DAYS, 36_500
    if not isinstance(days, int) or isinstance(days, bool) or not minimum <= days <= maximum:
        raise BadRequest(
            f"Audit retention must be between {minimum} and {maximum} days.", param="audit_retention_days"
        )
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    before = locked.audit_retention_days
    if before == days:
        return locked
    Tenant.objects.filter(pk=tenant.pk).update(audit_retention_days=days)
    locked.audit_retention_days = days
    tenant.audit_retention_days = days
    audit_record(
        tenant=locked,
        actor=actor,
        action="audit.retention_changed",
        target=locked,
        details={"retention_days": {"before": before, "after": days}},
    )
    return locked


# --- Verification -----------------------------------------------------------------------------


def audit_chains_verify() -> list[ChainReport]:
    """Verify every chain. Each broken one is logged and recorded on the platform chain
    (`audit.verification_failed`, with the first bad seq and what is wrong), where operators
    see it, every run until it is dealt with."""
    from audit.verification import audit_verify_all

    reports = audit_verify_all()
    for report in reports:
        if report.problem is None:
            continue
        audit_record(
            tenant=None,
            actor=Actor.system("audit verifier"),
            action="audit.verification_failed",
            target_type="audit.chain",
            target_id=report.chain,
            details={
                "seq": report.problem.seq,
                "kind": report.problem.kind,
                "message": report.problem.message,
            },
        )
    broken = sum(1 for report in reports if report.problem is not None)
    logger.info("audit chains verified chains=%s broken=%s", len(reports), broken)
    return reports
