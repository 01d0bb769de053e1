from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from audit.actors import Actor
from audit.chain import PLATFORM_CHAIN, chain_for
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_checkpoint_create, audit_purge_expired, audit_record, audit_retention_set
from audit.tests.conftest import record_many
from audit.verification import audit_verify_chain
from realtime_platform.errors import BadRequest
from tenants.tests.factories import TenantFactory

pytestmark = pytest.mark.django_db


def seqs(chain):
    return list(AuditEvent.objects.filter(chain=chain).order_by("seq").values_list("seq", flat=True))


@pytest.fixture
def aged(clock):
    """Two tenants whose trails began 400 days ago: 'short' keeps 90 days, 'long' the default."""
    ticking = clock(timezone.now() - timedelta(days=400))
    short = TenantFactory(slug="short")
    long_ = TenantFactory(slug="long")
    record_many(short, 5)  # short: seq 1..6, 400 days old
    record_many(long_, 5)
    ticking.now = timezone.now() - timedelta(days=100)
    record_many(short, 2)  # 7..8, 100 days old
    ticking.now = timezone.now() - timedelta(days=10)
    record_many(short, 2)  # 9..10, 10 days old
    audit_retention_set(tenant=short, days=90, actor=Actor.system("tests"))  # 11, 10 days old
    return short, long_


def test_purge_removes_only_rows_past_the_tenants_retention(aged):
    short, long_ = aged
    results = audit_purge_expired()
    assert [(r.chain, r.through_seq, r.deleted) for r in results] == [(chain_for(short.pk), 8, 8)]
    assert seqs(chain_for(short.pk)) == [9, 10, 11, 12]
    assert seqs(chain_for(long_.pk)) == list(range(1, 7))  # 400 days < 7 years


def test_purge_signs_the_boundary_first_and_is_itself_audited(aged):
    short, _ = aged
    audit_purge_expired()
    chain = chain_for(short.pk)
    checkpoint = AuditCheckpoint.objects.get(chain=chain, kind=AuditCheckpoint.Kind.PURGE)
    assert checkpoint.seq == 8
    purged = AuditEvent.objects.get(chain=chain, action="audit.purged")
    assert purged.seq == 12
    assert purged.actor_type == "system"
    assert purged.details["through_seq"] == 8
    assert purged.details["rows"] == 8
    assert purged.details["retention_days"] == 90
    assert purged.details["checkpoint_hash"] == checkpoint.hash


def test_a_purged_chain_still_verifies_from_its_purge_checkpoint(aged):
    short, _ = aged
    audit_purge_expired()
    report = audit_verify_chain(chain=chain_for(short.pk))
    assert report.ok, report.summary()
    assert report.first_seq == 9
    assert report.anchor == "purge checkpoint at seq 8"


def test_purging_twice_does_nothing_the_second_time(aged):
    short, _ = aged
    audit_purge_expired()
    assert audit_purge_expired() == []
    assert AuditEvent.objects.filter(chain=chain_for(short.pk), action="audit.purged").count() == 1


def test_a_purge_interrupted_halfway_still_verifies_and_finishes_later(aged):
    short, _ = aged
    chain = chain_for(short.pk)
    audit_checkpoint_create(chain=chain, kind=AuditCheckpoint.Kind.PURGE, seq=8)
    with transaction.atomic(), connection.cursor() as cursor:  # the first batch of 3, then a crash
        if connection.vendor == "postgresql":
            cursor.execute("SELECT set_config('rtp.audit_purge', 'on', true)")
        else:
            cursor.execute("INSERT INTO audit_purge_gate (kind) VALUES ('purge')")
        AuditEvent.objects.filter(chain=chain, seq__lte=3).delete()
    report = audit_verify_chain(chain=chain)
    assert report.ok, report.summary()
    assert report.anchor == "purge checkpoint at seq 8 (partly purged)"
    audit_purge_expired(batch_size=2)
    assert seqs(chain)[0] == 9
    assert audit_verify_chain(chain=chain).ok


def test_rows_missing_at_the_start_without_a_purge_are_reported(aged, tamper):
    short, _ = aged
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq <= 3", [chain_for(short.pk)])
    report = audit_verify_chain(chain=chain_for(short.pk))
    assert (report.problem.seq, report.problem.kind) == (1, "deleted")
    assert "no retention purge" in report.problem.message


def test_the_platform_chain_follows_its_own_retention(clock, settings):
    settings.AUDIT_PLATFORM_RETENTION_DAYS = 30
    ticking = clock(timezone.now() - timedelta(days=60))
    audit_record(tenant=None, actor=Actor.system("tests"), action="plan.created")
    ticking.now = timezone.now()
    audit_record(tenant=None, actor=Actor.system("tests"), action="plan.changed")
    results = audit_purge_expired()
    assert [(r.chain, r.through_seq) for r in results] == [(PLATFORM_CHAIN, 1)]
    assert seqs(PLATFORM_CHAIN) == [2, 3]
    assert audit_verify_chain(chain=PLATFORM_CHAIN).ok


def test_purge_never_reaches_past_the_real_clock(aged):
    assert audit_purge_expired(now=timezone.now() + timedelta(days=3650))[0].through_seq == 8


def test_retention_changes_are_bounded_and_audited(tenant, settings):
    settings.AUDIT_RETENTION_MIN_DAYS = 30
    for bad in (29, 0, -1, 36_501, "90", True):
        with pytest.raises(BadRequest) as caught:
            audit_retention_set(tenant=tenant, days=bad, actor=Actor.system("tests"))
        assert caught.value.param == "audit_retention_days"
    audit_retention_set(tenant=tenant, days=400, actor=Actor.system("tests"))
    audit_retention_set(tenant=tenant, days=400, actor=Actor.system("tests"))  # no change, no event
    tenant.refresh_from_db()
    assert tenant.audit_retention_days == 400
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), action="audit.retention_changed")
    assert event.details == {"retention_days": {"before": 365 * 7, "after": 400}}
