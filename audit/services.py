"""The only writer of the audit trail."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.db import models, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditChainHead, AuditEvent
from realtime_platform.context import current_request_id
from realtime_platform.redaction import redact

if TYPE_CHECKING:
    from tenants.models import Tenant

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
PLATFORM_CHAIN = "platform"

# The fields a row's hash commits to, in this order of meaning (the encoding sorts keys anyway).
HASHED_FIELDS = (
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
)


def chain_for(tenant_id: int | None) -> str:
    return f"tenant:{tenant_id}" if tenant_id is not None else PLATFORM_CHAIN


def canonical_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    """Sorted keys, fixed separators, UTF-8, UTC timestamps with microseconds: the same bytes for
    the same content on every machine, database and Python version."""
    payload = dict(fields)
    if isinstance(payload.get("created_at"), datetime):
        payload["created_at"] = canonical_timestamp(payload["created_at"])
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def row_fields(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in HASHED_FIELDS}


def _json_safe(details: dict[str, Any]) -> dict[str, Any]:
    # Decimals, datetimes and UUIDs become strings now, so the stored JSON and the hashed bytes
    # are the same thing when a verifier reads the row back.
    return json.loads(json.dumps(details, default=str))  # type: ignore[no-any-return]


def _normal_ip(ip: str | None) -> str | None:
    # Stored as the database will return it, so the hash matches on re-read.
    if not ip:
        return None
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return None
    return AuditEvent._meta.get_field("ip").get_prep_value(ip)  # type: ignore[no-any-return]


def _lock_head(chain: str, tenant_id: int | None) -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update().filter(chain=chain).first()
    if head is None:
        AuditChainHead.objects.bulk_create(
            [AuditChainHead(chain=chain, tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)],
            ignore_conflicts=True,
        )
        head = AuditChainHead.objects.select_for_update().get(chain=chain)
    return head


@transaction.atomic
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
    record commit or roll back together). Secret-shaped values in `details` are masked first."""
    tenant_id = tenant.pk if tenant is not None else None
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
    chain = chain_for(tenant_id)
    head = _lock_head(chain, tenant_id)
    event = AuditEvent(
        chain=chain,
        seq=head.seq + 1,
        tenant_id=tenant_id,
        created_at=timezone.now(),
        actor_type=actor.kind,
        actor_id=actor.id,
        actor_label=actor.label[:200],
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        request_id=(request_id or current_request_id() or "")[:128],
        ip=_normal_ip(actor.ip),
        details=redact(_json_safe(details or {})),
        prev_hash=head.hash,
    )
    event.hash = compute_hash(row_fields(event))
    event.save(force_insert=True)
    AuditChainHead.objects.filter(pk=head.pk).update(seq=event.seq, hash=event.hash)
    return event
