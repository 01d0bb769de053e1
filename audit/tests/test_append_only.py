"""The database itself refuses to change or remove audit rows, whatever code asks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.chain import chain_for
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from audit.services import audit_checkpoint_create
from audit.tests.conftest import record_many
from tenants.tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def strict(db):
    """The triggers exactly as in production: the test database's flush allowance off."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL rtp.audit_allow_truncate = 'off'")
        else:
            cursor.execute("DELETE FROM audit_purge_gate WHERE kind = 'flush'")


def refused(sql, params=None):
    with pytest.raises(DatabaseError) as caught, transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params or [])
    return str(caught.value)


def open_gate():
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT set_config('rtp.audit_purge', 'on', true)")
        else:
            cursor.execute("INSERT INTO audit_purge_gate (kind) VALUES ('purge')")


def test_orm_updates_and_deletes_are_refused(tenant, strict):
    event = record_many(tenant, 1)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="key.deleted")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    event.actor_label = "mallory"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        event.save()
    event.refresh_from_db()
    assert event.actor_label == "user0"


def test_raw_sql_updates_and_deletes_are_refused(tenant, strict):
    record_many(tenant, 2)
    chain = chain_for(tenant.pk)
    assert "append-only" in refused("UPDATE audit_auditevent SET details = '{}' WHERE chain = %s", [chain])
    assert "append-only" in refused("DELETE FROM audit_auditevent WHERE chain = %s", [chain])
    assert AuditEvent.objects.filter(chain=chain).count() == 3


@pytest.mark.postgres
def test_truncate_is_refused(tenant, strict):
    record_many(tenant, 1)
    for table in ("audit_auditevent", "audit_auditcheckpoint", "audit_auditchainhead"):
        assert "TRUNCATE" in refused(f"TRUNCATE {table} CASCADE")
    assert AuditEvent.objects.filter(chain=chain_for(tenant.pk)).count() == 2


def test_checkpoints_cannot_be_changed_or_removed(tenant, strict):
    record_many(tenant, 1)
    checkpoint = audit_checkpoint_create(chain=chain_for(tenant.pk))
    assert "append-only" in refused(
        "UPDATE audit_auditcheckpoint SET hash = 'x' WHERE id = %s", [checkpoint.pk]
    )
    assert "append-only" in refused("DELETE FROM audit_auditcheckpoint WHERE id = %s", [checkpoint.pk])
    assert AuditCheckpoint.objects.get(pk=checkpoint.pk).hash == checkpoint.hash


def test_chain_heads_only_move_forward(tenant, strict):
    record_many(tenant, 3)
    chain = chain_for(tenant.pk)
    assert "forward" in refused("UPDATE audit_auditchainhead SET seq = 2 WHERE chain = %s", [chain])
    assert "forward" in refused("UPDATE audit_auditchainhead SET chain = 'x' WHERE chain = %s", [chain])
    assert "forward" in refused("DELETE FROM audit_auditchainhead WHERE chain = %s", [chain])
    assert AuditChainHead.objects.get(chain=chain).seq == 4


def test_the_purge_gate_only_lets_expired_checkpointed_rows_go(clock, strict):
    old = clock(timezone.now() - timedelta(days=400))
    tenant = TenantFactory(slug="gated")
    tenant.audit_retention_days = 90
    tenant.save(update_fields=["audit_retention_days"])
    record_many(tenant, 3)  # seq 2..4, 400 days old
    old.now = timezone.now()
    record_many(tenant, 2)  # seq 5..6, today
    chain = chain_for(tenant.pk)

    # Gate open, expired row, but no purge checkpoint covers it: refused.
    with transaction.atomic():
        open_gate()
        with pytest.raises(DatabaseError), transaction.atomic():
            AuditEvent.objects.filter(chain=chain, seq=1).delete()
        transaction.set_rollback(True)  # closes the gate again
    checkpoint = audit_checkpoint_create(chain=chain, kind=AuditCheckpoint.Kind.PURGE, seq=6)
    assert checkpoint is not None
    # Covered, but still inside its retention: refused.
    with transaction.atomic():
        open_gate()
        with pytest.raises(DatabaseError), transaction.atomic():
            AuditEvent.objects.filter(chain=chain, seq=5).delete()
        transaction.set_rollback(True)  # closes the gate again
    # Gate closed: refused.
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(chain=chain, seq=1).delete()
    # Gate open, covered, expired: allowed.
    with transaction.atomic():
        open_gate()
        deleted, _ = AuditEvent.objects.filter(chain=chain, seq__lte=4).delete()
    assert deleted == 4
    assert list(AuditEvent.objects.filter(chain=chain).values_list("seq", flat=True).order_by("seq")) == [
        5,
        6,
    ]
