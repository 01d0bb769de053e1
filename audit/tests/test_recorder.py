from __future__ import annotations

import threading

import pytest
from django.db import connection

from audit.actors import Actor
from audit.models import AuditChainHead, AuditEvent
from audit.services import GENESIS_HASH, audit_record, compute_hash, row_fields
from tenants import keys


def assert_chain_intact(chain: str) -> list[AuditEvent]:
    events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
    previous = GENESIS_HASH
    for expected_seq, event in enumerate(events, start=1):
        assert event.seq == expected_seq
        assert event.prev_hash == previous
        assert event.hash == compute_hash(row_fields(event))
        previous = event.hash
    head = AuditChainHead.objects.get(chain=chain)
    assert (head.seq, head.hash) == (len(events), previous)
    return events


@pytest.mark.django_db
def test_events_chain_per_tenant(tenant, other_tenant):
    actor = Actor.system("tests")
    for i in range(3):
        audit_record(tenant=tenant, actor=actor, action="test.event", details={"i": i})
    audit_record(tenant=other_tenant, actor=actor, action="test.event")
    audit_record(tenant=None, actor=actor, action="platform.event")
    ours = assert_chain_intact(f"tenant:{tenant.pk}")
    assert [e.details.get("i") for e in ours[-3:]] == [0, 1, 2]
    assert_chain_intact(f"tenant:{other_tenant.pk}")
    assert_chain_intact("platform")


@pytest.mark.django_db
def test_changing_any_hashed_field_changes_the_hash(tenant):
    event = audit_record(tenant=tenant, actor=Actor.system("tests"), action="key.created", details={"a": 1})
    original = compute_hash(row_fields(event))
    for name, value in [
        ("action", "key.revoked"),
        ("details", {"a": 2}),
        ("actor_label", "mallory"),
        ("seq", 99),
    ]:
        fields = row_fields(event)
        fields[name] = value
        assert compute_hash(fields) != original


@pytest.mark.django_db
def test_request_id_and_ip_are_recorded(tenant):
    from realtime_platform.context import request_id_var

    request_id_var.set("req_audit_1")
    event = audit_record(tenant=tenant, actor=Actor("user", "1", "alice", ip="::ffff:10.0.0.1"), action="x.y")
    event.refresh_from_db()
    assert event.request_id == "req_audit_1"
    assert event.hash == compute_hash(row_fields(event))  # the stored (normalised) IP is what was hashed


@pytest.mark.django_db
def test_secrets_never_enter_details(tenant):
    api_key = keys.generate(keys.KeyType.API_KEY).plaintext
    event = audit_record(
        tenant=tenant,
        actor=Actor.system("tests"),
        action="test.redaction",
        details={
            "note": f"client sent {api_key}",
            "authorization": f"Bearer {api_key}",
            "ek": "ek_" + "a1" * 16,
        },
    )
    event.refresh_from_db()
    stored = str(event.details)
    assert api_key not in stored
    assert "ek_" + "a1" * 16 not in stored


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_fork_the_chain(tenant):
    writers, per_writer = 16, 25
    barrier = threading.Barrier(writers)

    def write(n):
        barrier.wait()
        try:
            for i in range(per_writer):
                audit_record(
                    tenant=tenant, actor=Actor.system(f"writer-{n}"), action="race.event", details={"i": i}
                )
        finally:
            connection.close()

    pool = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    events = assert_chain_intact(f"tenant:{tenant.pk}")
    assert sum(1 for e in events if e.action == "race.event") == writers * per_writer


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_across_tenants_with_rollbacks_leave_every_chain_whole(tenant, other_tenant):
    """16 writers spread over three chains, a third of whose transactions roll back after
    recording: every chain stays gapless and verifies, and no rolled-back event survives."""
    from django.db import transaction

    from audit.verification import audit_verify_chain

    targets = [tenant, other_tenant, None]
    writers, per_writer = 16, 30
    barrier = threading.Barrier(writers + 1)
    errors = []

    class Abort(Exception):
        pass

    def write(n):
        barrier.wait()
        try:
            for i in range(per_writer):
                target = targets[(n + i) % 3]
                try:
                    with transaction.atomic():
                        audit_record(
                            tenant=target,
                            actor=Actor.system(f"writer-{n}"),
                            action="race.kept" if i % 3 else "race.rolled_back",
                            details={"n": n, "i": i},
                        )
                        if i % 3 == 0:
                            raise Abort
                except Abort:
                    pass
        except Exception as exc:  # a failure in a thread must fail the test
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in pool:
        thread.start()
    barrier.wait()
    for thread in pool:
        thread.join()
    assert not errors
    assert not AuditEvent.objects.filter(action="race.rolled_back").exists()
    assert AuditEvent.objects.filter(action="race.kept").count() == writers * 20
    for target in targets:
        chain = f"tenant:{target.pk}" if target else "platform"
        assert_chain_intact(chain)
        assert audit_verify_chain(chain=chain).ok


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_verifying_and_checkpointing_while_writers_append(tenant):
    """The verifier reads one snapshot, and checkpoints lock only the head for a moment: both
    run cleanly beside writers."""
    from audit.services import audit_checkpoint_create
    from audit.verification import audit_verify_chain

    chain = f"tenant:{tenant.pk}"
    stop = threading.Event()
    errors = []

    def write():
        try:
            while not stop.is_set():
                audit_record(tenant=tenant, actor=Actor.system("writer"), action="race.event")
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=write) for _ in range(4)]
    for thread in pool:
        thread.start()
    try:
        reports = []
        for _ in range(5):
            audit_checkpoint_create(chain=chain)
            reports.append(audit_verify_chain(chain=chain))
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    assert not errors
    assert all(report.ok for report in reports), [r.summary() for r in reports]
    assert audit_verify_chain(chain=chain).ok


@pytest.mark.postgres
@pytest.mark.django_db
def test_the_recorder_statement_can_be_prepared_once_per_connection(tenant, settings):
    from audit.verification import audit_verify_chain

    settings.AUDIT_PREPARED_STATEMENTS = True
    for i in range(3):
        audit_record(tenant=tenant, actor=Actor.system("tests"), action="prepared.event", details={"i": i})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", ["%audit_auditchainhead%"]
        )
        assert cursor.fetchone()[0] == 1
    assert audit_verify_chain(chain=f"tenant:{tenant.pk}").ok
