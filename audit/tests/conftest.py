from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
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
