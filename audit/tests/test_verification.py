"""The verifier against every kind of tampering, done the way an attacker with database access
would: raw SQL, triggers out of the way (see the `tamper` fixture)."""

from __future__ import annotations

import hashlib
import random

import pytest
from django.db import connection, transaction

from audit.chain import chain_for, compute_hash, field_payloads, row_fields, wire_row
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_checkpoint_create
from audit.tests.conftest import record_many
from audit.verification import audit_verify_chain, audit_verify_tenant, chain_rows

pytestmark = pytest.mark.django_db

CONTENT_FIELDS = [
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
    "tenant_id",
]


def problem_of(tenant):
    report = audit_verify_tenant(tenant_id=tenant.pk)
    assert not report.ok, report.summary()
    return report.problem


def shift_up(tamper, chain, from_seq, by=1):
    # Two steps, so the unique (chain, seq) constraint holds at every row.
    tamper(
        "UPDATE audit_auditevent SET seq = seq + 1000000 WHERE chain = %s AND seq >= %s", [chain, from_seq]
    )
    tamper(
        "UPDATE audit_auditevent SET seq = seq - %s WHERE chain = %s AND seq >= %s",
        [1000000 - by, chain, 1000000 + from_seq],
    )


def swap(tamper, chain, a, b):
    tamper("UPDATE audit_auditevent SET seq = 999999 WHERE chain = %s AND seq = %s", [chain, a])
    tamper("UPDATE audit_auditevent SET seq = %s WHERE chain = %s AND seq = %s", [a, chain, b])
    tamper("UPDATE audit_auditevent SET seq = %s WHERE chain = %s AND seq = 999999", [b, chain])


def forge_row(tamper, tenant, seq, *, link_to=None):
    """Insert a made-up row at `seq`; with `link_to`, a careful forgery: it links to that hash and
    carries a correct hash of its own."""
    event = AuditEvent(
        chain=chain_for(tenant.pk),
        seq=seq,
        tenant_id=tenant.pk,
        created_at=AuditEvent.objects.filter(chain=chain_for(tenant.pk)).order_by("seq").first().created_at,
        actor_type="user",
        actor_id="666",
        actor_label="mallory",
        action="key.created",
        target_type="tenants.apikey",
        target_id="666",
        request_id="req_forged",
        ip=None,
        details={"forged": True},
        prev_hash=link_to or "f" * 64,
    )
    event.hash = compute_hash(row_fields(event)) if link_to else "e" * 64
    tamper(
        "INSERT INTO audit_auditevent (chain, seq, tenant_id, created_at, actor_type, actor_id, actor_label,"
        " action, target_type, target_id, request_id, ip, details, prev_hash, hash)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s)",
        [
            event.chain,
            event.seq,
            event.tenant_id,
            connection.ops.adapt_datetimefield_value(event.created_at),
            "user",
            "666",
            "mallory",
            "key.created",
            "tenants.apikey",
            "666",
            "req_forged",
            '{"forged":true}',
            event.prev_hash,
            event.hash,
        ],
    )


def hash_of(tenant, seq):
    return AuditEvent.objects.get(chain=chain_for(tenant.pk), seq=seq).hash


def altered_value(event, field):
    value = getattr(event, field)
    if field == "created_at":
        return connection.ops.adapt_datetimefield_value(
            value.replace(microsecond=(value.microsecond + 1) % 10**6)
        )
    if field == "ip":
        return "192.0.2.77" if value != "192.0.2.77" else "192.0.2.78"
    if field == "details":
        return '{"i":-1}'
    if field in ("prev_hash", "hash"):
        return ("0" if value[0] != "0" else "1") + value[1:]
    if field == "tenant_id":
        return None
    return f"{value}x"


# --- Intact chains ----------------------------------------------------------------------------


def test_a_recorded_chain_verifies(tenant, other_tenant):
    record_many(tenant, 30)
    record_many(other_tenant, 5)
    report = audit_verify_tenant(tenant_id=tenant.pk)
    assert report.ok, report.summary()
    assert report.rows == 31  # tenant.created, then ours
    assert (report.first_seq, report.last_seq, report.head_seq) == (1, 31, 31)
    assert report.anchor == "genesis"
    assert "OK tenant:" in report.summary()


def test_details_of_every_shape_round_trip_and_verify(tenant):
    record_many(
        tenant,
        3,
        unicode="naïve — 日本語 \U0001f600 \u2028",
        nested={"b": [1, 2.5, None, True], "a": {"z": "\t\n\x01", "y": 1e-7}},
        big=2**70,
        nul="a\x00b",
        floats=[1e16, -0.0, 0.1 + 0.2, float("inf")],
    )
    assert audit_verify_tenant(tenant_id=tenant.pk).ok
    event = AuditEvent.objects.filter(chain=chain_for(tenant.pk)).order_by("-seq").first()
    assert event.details["unicode"] == "naïve — 日本語 \U0001f600 \u2028"
    assert event.details["big"] == str(2**70)
    assert event.details["nul"] == "a\ufffdb"
    assert event.details["floats"][3] == "inf"


@pytest.mark.postgres
def test_postgres_binary_copy_rows_are_the_hash_encoding_byte_for_byte(tenant):
    """What the verifier reads off PostgreSQL's binary COPY is exactly audit.chain's encoding."""
    record_many(tenant, 5)
    events = list(AuditEvent.objects.filter(chain=chain_for(tenant.pk)).order_by("seq"))
    wire = [row for batch in chain_rows(chain_for(tenant.pk)) for row in batch]
    assert wire == [wire_row(field_payloads(row_fields(e)), e.hash) for e in events]
    for row, event in zip(wire, events, strict=True):
        assert hashlib.sha256(b"rtp-audit-v1\n" + row[2:-68]).hexdigest() == event.hash


# --- Each kind of tampering -------------------------------------------------------------------


@pytest.mark.parametrize("field", CONTENT_FIELDS)
def test_altering_any_field_of_a_row_is_caught_at_that_row(tenant, tamper, field):
    record_many(tenant, 10)
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), seq=6)
    tamper(f"UPDATE audit_auditevent SET {field} = %s WHERE id = %s", [altered_value(event, field), event.pk])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (6, "altered")


def test_a_row_altered_and_rehashed_is_caught_at_that_row(tenant, tamper):
    record_many(tenant, 10)
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), seq=4)
    event.action = "key.deleted"
    tamper(
        "UPDATE audit_auditevent SET action = %s, hash = %s WHERE id = %s",
        [event.action, compute_hash(row_fields(event)), event.pk],
    )
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (4, "altered")
    assert "hash recomputed" in problem.message


@pytest.mark.parametrize("seq", [1, 5, 11])
def test_deleting_a_row_is_caught_at_its_seq(tenant, tamper, seq):
    record_many(tenant, 10)
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain_for(tenant.pk), seq])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (seq, "deleted")


def test_deleting_a_row_and_renumbering_the_rest_is_caught(tenant, tamper):
    record_many(tenant, 10)
    chain = chain_for(tenant.pk)
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 7", [chain])
    tamper("UPDATE audit_auditevent SET seq = seq - 1 WHERE chain = %s AND seq > 7", [chain])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (7, "deleted")


@pytest.mark.parametrize("careful", [False, True])
def test_inserting_a_row_is_caught_at_its_seq(tenant, tamper, careful):
    record_many(tenant, 10)
    chain = chain_for(tenant.pk)
    link = hash_of(tenant, 4) if careful else None
    shift_up(tamper, chain, 5)
    forge_row(tamper, tenant, 5, link_to=link)
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (5, "inserted")


def test_rows_appended_past_the_head_are_caught(tenant, tamper):
    record_many(tenant, 3)
    forge_row(tamper, tenant, 5, link_to=hash_of(tenant, 4))
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (5, "inserted")


@pytest.mark.parametrize(("a", "b"), [(3, 4), (2, 9), (1, 11)])
def test_reordering_rows_is_caught_at_the_first_moved_row(tenant, tamper, a, b):
    record_many(tenant, 10)
    swap(tamper, chain_for(tenant.pk), a, b)
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (a, "reordered")


def test_truncating_the_tail_is_caught(tenant, tamper):
    record_many(tenant, 10)
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq > 8", [chain_for(tenant.pk)])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (9, "deleted")


def test_truncating_the_tail_and_winding_the_head_back_is_caught_by_the_checkpoint(tenant, tamper):
    record_many(tenant, 10)
    chain = chain_for(tenant.pk)
    assert audit_checkpoint_create(chain=chain).seq == 11
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq > 8", [chain])
    tamper("UPDATE audit_auditchainhead SET seq = 8, hash = %s WHERE chain = %s", [hash_of(tenant, 8), chain])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (9, "deleted")
    assert "checkpoint signed seq 11" in problem.message


def test_rewriting_the_whole_chain_is_caught_by_a_signed_checkpoint(tenant, tamper):
    """Recompute every hash after a change: the rows agree with each other, not with what was
    signed."""
    record_many(tenant, 10)
    chain = chain_for(tenant.pk)
    audit_checkpoint_create(chain=chain)
    record_many(tenant, 5)
    events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
    prev = events[2].hash
    for event in events[3:]:
        if event.seq == 4:
            event.details = {"i": 999}
        event.prev_hash = prev
        event.hash = compute_hash(row_fields(event))
        tamper(
            "UPDATE audit_auditevent SET details = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [
                AuditEvent._meta.get_field("details").get_prep_value(event.details),
                event.prev_hash,
                event.hash,
                event.pk,
            ],
        )
        prev = event.hash
    tamper("UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", [prev, chain])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (11, "rewritten")
    assert "seq 1..11" in problem.message


def test_a_forged_or_dropped_checkpoint_is_caught(tenant, tamper):
    record_many(tenant, 3)
    chain = chain_for(tenant.pk)
    first = audit_checkpoint_create(chain=chain)
    record_many(tenant, 3)
    second = audit_checkpoint_create(chain=chain)
    assert audit_verify_tenant(tenant_id=tenant.pk).ok
    with transaction.atomic():
        tamper("UPDATE audit_auditcheckpoint SET hash = %s WHERE id = %s", ["a" * 64, first.pk])
        problem = problem_of(tenant)
        assert (problem.seq, problem.kind) == (first.seq, "checkpoint")
        transaction.set_rollback(True)
    tamper("DELETE FROM audit_auditcheckpoint WHERE id = %s", [first.pk])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (second.seq, "checkpoint")


def test_a_head_that_disagrees_with_the_last_row_is_caught(tenant, tamper):
    record_many(tenant, 3)
    tamper("UPDATE audit_auditchainhead SET hash = %s WHERE chain = %s", ["b" * 64, chain_for(tenant.pk)])
    problem = problem_of(tenant)
    assert (problem.seq, problem.kind) == (4, "altered")


# --- Randomized -------------------------------------------------------------------------------


def test_randomized_tampering_is_always_caught_at_the_exact_seq(tenant, other_tenant, tamper):
    """Many single-row modifications, deletions, insertions and reorderings (seeded): every one
    is detected, at exactly the first bad seq."""
    rng = random.Random(20261126)
    record_many(tenant, 59)  # 60 rows with tenant.created
    chain = chain_for(tenant.pk)
    count = AuditEvent.objects.filter(chain=chain).count()
    kinds = ["altered", "deleted", "inserted", "reordered"] * 40
    rng.shuffle(kinds)
    outcomes = []
    for kind in kinds:
        with transaction.atomic():
            if kind == "altered":
                seq = rng.randint(1, count)
                field = rng.choice(CONTENT_FIELDS)
                event = AuditEvent.objects.get(chain=chain, seq=seq)
                tamper(
                    f"UPDATE audit_auditevent SET {field} = %s WHERE id = %s",
                    [altered_value(event, field), event.pk],
                )
            elif kind == "deleted":
                seq = rng.randint(1, count)
                tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq = %s", [chain, seq])
            elif kind == "inserted":
                seq = rng.randint(1, count)
                link = (hash_of(tenant, seq - 1) if seq > 1 else "0" * 64) if rng.random() < 0.5 else None
                shift_up(tamper, chain, seq)
                forge_row(tamper, tenant, seq, link_to=link)
            else:
                seq = rng.randint(1, count - 1)
                other = seq + 1 if rng.random() < 0.5 else rng.randint(seq + 1, count)
                swap(tamper, chain, seq, other)
            report = audit_verify_chain(chain=chain)
            outcomes.append((kind, seq, report.problem and (report.problem.kind, report.problem.seq)))
            transaction.set_rollback(True)
    misses = [o for o in outcomes if o[2] != (o[0], o[1])]
    assert not misses, misses
    assert len(outcomes) == 160
    assert audit_verify_chain(chain=chain).ok  # every tampering was rolled back


# --- Checkpoints and keys ---------------------------------------------------------------------


def test_checkpoints_are_signed_linked_and_idempotent(tenant):
    record_many(tenant, 3)
    chain = chain_for(tenant.pk)
    first = audit_checkpoint_create(chain=chain)
    assert audit_checkpoint_create(chain=chain) == first  # nothing new to sign
    record_many(tenant, 2)
    second = audit_checkpoint_create(chain=chain)
    assert (first.seq, second.seq) == (4, 6)
    assert second.prev_signature == first.signature
    assert len(second.signature) == 64
    assert AuditCheckpoint.objects.filter(chain=chain).count() == 2
    report = audit_verify_chain(chain=chain)
    assert report.ok
    assert report.checkpoints == 2


def test_checkpoints_of_a_rotated_key_still_verify_when_the_old_key_is_kept(tenant, settings):
    settings.AUDIT_SIGNING_KEY = "old-key-0123456789"
    record_many(tenant, 2)
    audit_checkpoint_create(chain=chain_for(tenant.pk))
    settings.AUDIT_SIGNING_KEY = "new-key-9876543210"
    report = audit_verify_tenant(tenant_id=tenant.pk)
    assert report.ok
    assert report.warnings
    assert "does not have" in report.warnings[0]
    settings.AUDIT_SIGNING_KEYS_PREVIOUS = ["old-key-0123456789"]
    report = audit_verify_tenant(tenant_id=tenant.pk)
    assert report.ok
    assert not report.warnings
    settings.AUDIT_SIGNING_KEYS_PREVIOUS = ["some-other-key-000"]
    record_many(tenant, 1)
    audit_checkpoint_create(chain=chain_for(tenant.pk))
    assert audit_verify_tenant(tenant_id=tenant.pk).ok
