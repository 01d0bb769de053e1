from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from audit.actors import Actor
from audit.models import AuditEvent
from audit.services import audit_record


@pytest.fixture
def tamper(db: Any) -> Callable[..., Any]:
    """Raw SQL on the audit tables with the append-only triggers out of the way, as an attacker
    with database access would have it: inside the test's transaction, so it all rolls back.

    PostgreSQL: the triggers are disabled (ALTER TABLE … DISABLE TRIGGER USER). SQLite: the test
    database's flush gate already lets writes through (see audit.testing)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # ALTER TABLE refuses pending FK checks
            for table in ("audit_auditevent", "audit_auditchainhead", "audit_auditcheckpoint"):
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")

    def run(sql: str, params: list[Any] | None = None) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params or [])
            return int(cursor.rowcount)

    return run


def record_many(tenant: Any, count: int, *, action: str = "test.event", **extra: Any) -> list[AuditEvent]:
    return [
        audit_record(
            tenant=tenant,
            actor=Actor("user", str(i % 5), f"user{i % 5}", ip=f"10.0.0.{i % 250 + 1}"),
            action=action,
            target_type="tests.thing",
            target_id=str(i),
            details={"i": i, "note": f"event {i}", **extra},
            request_id=f"req_{i}",
        )
        for i in range(count)
    ]


class FrozenClock:
    """The recorder's clock, settable (audit.services._now)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: datetime) -> None:
        self.now = start
        monkeypatch.setattr("audit.services._now", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], FrozenClock]:
    return lambda start: FrozenClock(monkeypatch, start)


def bulk_chain(
    tenant: Any,
    count: int,
    *,
    start: datetime | None = None,
    step: timedelta = timedelta(seconds=1),
    actions: tuple[str, ...] = ("secret.issued", "session.opened", "key.created", "session.refused"),
) -> None:
    """Append `count` valid rows to the tenant's chain quickly (hashes computed here, rows
    bulk-inserted; no trigger refuses INSERT), on any database."""
    from django.utils import timezone

    from audit.chain import chain_for, compute_hash, row_fields
    from audit.models import AuditChainHead

    chain = chain_for(tenant.pk)
    head = AuditChainHead.objects.get(chain=chain)
    at = max(start or timezone.now(), head.created_at or timezone.now())
    prev, seq = head.hash, head.seq
    rows = []
    for i in range(count):
        seq += 1
        at += step
        event = AuditEvent(
            chain=chain,
            seq=seq,
            tenant_id=tenant.pk,
            created_at=at,
            actor_type="user" if i % 3 else "api_key",
            actor_id=str(i % 4),
            actor_label=f"user{i % 4}" if i % 3 else "rtp_sk_Abcd1234",
            action=actions[i % len(actions)],
            target_type="tokens.clientsecret",
            target_id=str(i),
            request_id=f"req_{i}",
            ip=f"10.1.{i // 250 % 250}.{i % 250 + 1}",
            details={"i": i, "model": "gpt-realtime", "note": "x" * 40},
            prev_hash=prev,
        )
        event.hash = compute_hash(row_fields(event))
        prev = event.hash
        rows.append(event)
        if len(rows) >= 2_000:
            AuditEvent.objects.bulk_create(rows)
            rows = []
    AuditEvent.objects.bulk_create(rows)
    AuditChainHead.objects.filter(pk=head.pk).update(seq=seq, hash=prev, created_at=at)
