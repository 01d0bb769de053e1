from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.actors import Actor
from audit.chain import chain_for
from audit.models import AuditEvent
from audit.selectors import (
    AuditFilter,
    audit_actions_seen,
    audit_event_get,
    audit_event_page,
    audit_event_queryset,
    audit_filter_from_params,
    audit_seq_range,
)
from audit.services import audit_record
from audit.tests.conftest import bulk_chain
from realtime_platform.errors import BadRequest

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(tenant, other_tenant, clock):
    """23 events a minute apart (plus tenant.created), of assorted actors, actions and targets;
    and some of the other tenant's. (The clock runs ahead: a chain's time never goes back.)"""
    start = timezone.now() + timedelta(minutes=1)
    ticking = clock(start)
    for i in range(23):
        ticking.now = start + timedelta(minutes=i)
        audit_record(
            tenant=tenant,
            actor=Actor(
                ("user", "api_key", "system")[i % 3], str(i % 3), ("alice", "rtp_sk_Ab12Cd34", "beat")[i % 3]
            ),
            action=("secret.issued", "key.revoked", "session.refused", "policy.changed")[i % 4],
            target_type="tenants.apikey" if i % 2 else "tokens.clientsecret",
            target_id=str(i % 5),
            request_id=f"req_{i % 6}",
        )
    for _ in range(3):
        audit_record(
            tenant=other_tenant, actor=Actor("user", "0", "alice"), action="secret.issued", target_id="0"
        )
    return tenant


def all_events(tenant):
    return list(AuditEvent.objects.filter(chain=chain_for(tenant.pk)).order_by("-seq"))


def walk_pages(tenant, filters, limit):
    pages, cursor = [], None
    while True:
        page = audit_event_page(tenant=tenant, filters=filters, cursor=cursor, limit=limit)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_pages_go_newest_first_without_gaps_or_repeats(trail):
    pages = walk_pages(trail, AuditFilter(), 5)
    seen = [e.seq for page in pages for e in page.events]
    assert seen == [e.seq for e in all_events(trail)] == list(range(24, 0, -1))
    assert [len(p.events) for p in pages] == [5, 5, 5, 5, 4]
    assert pages[0].prev_cursor is None
    assert pages[-1].next_cursor is None


def test_previous_cursors_lead_back_to_the_same_pages(trail):
    pages = walk_pages(trail, AuditFilter(action="secret.issued"), 2)
    back = audit_event_page(
        tenant=trail, filters=AuditFilter(action="secret.issued"), cursor=pages[-1].prev_cursor, limit=2
    )
    assert [e.seq for e in back.events] == [e.seq for e in pages[-2].events]
    first = audit_event_page(
        tenant=trail, filters=AuditFilter(action="secret.issued"), cursor=pages[1].prev_cursor, limit=2
    )
    assert [e.seq for e in first.events] == [e.seq for e in pages[0].events]
    assert first.prev_cursor is None


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"actor": "alice"}, lambda e: e.actor_label == "alice"),
        ({"actor_type": "api_key"}, lambda e: e.actor_type == "api_key"),
        ({"action": "key.revoked"}, lambda e: e.action == "key.revoked"),
        (
            {"target_type": "tenants.apikey", "target_id": "3"},
            lambda e: (e.target_type, e.target_id) == ("tenants.apikey", "3"),
        ),
        ({"request_id": "req_2"}, lambda e: e.request_id == "req_2"),
        (
            {"action": "policy.changed", "actor": "beat"},
            lambda e: (e.action, e.actor_label) == ("policy.changed", "beat"),
        ),
    ],
)
def test_each_filter_selects_exactly_its_events(trail, params, keep):
    filters = audit_filter_from_params(params)
    got = [e.seq for page in walk_pages(trail, filters, 3) for e in page.events]
    expected = [e.seq for e in all_events(trail) if keep(e)]
    assert got == expected
    assert expected  # the fixture has some of each


def test_time_ranges_include_since_and_exclude_until(trail):
    events = sorted(all_events(trail), key=lambda e: e.seq)
    since, until = events[5].created_at, events[9].created_at
    page = audit_event_page(tenant=trail, filters=AuditFilter(since=since, until=until))
    assert [e.seq for e in page.events] == [9, 8, 7, 6]
    day = events[1].created_at.date()
    whole_day = audit_filter_from_params({"since": day.isoformat(), "until": day.isoformat()})
    assert whole_day.until - whole_day.since == timedelta(days=1)
    future = AuditFilter(since=timezone.now() + timedelta(days=1))
    assert audit_event_page(tenant=trail, filters=future).events == []


def test_other_tenants_events_never_show(trail, other_tenant):
    mine = {e.pk for page in walk_pages(trail, AuditFilter(actor="alice"), 50) for e in page.events}
    theirs = set(AuditEvent.objects.filter(chain=chain_for(other_tenant.pk)).values_list("pk", flat=True))
    assert mine
    assert not mine & theirs
    assert audit_event_get(tenant=trail, seq=26) is None  # other tenant's chain goes that far, ours not
    assert audit_event_get(tenant=other_tenant, seq=2).chain == chain_for(other_tenant.pk)


def test_bad_cursors_and_limits_are_refused(trail):
    for cursor in ("x12", "o", "o-1", "n12abc", "o" + "9" * 19):
        with pytest.raises(BadRequest) as caught:
            audit_event_page(tenant=trail, cursor=cursor)
        assert caught.value.param == "cursor"
    for limit in (0, 501):
        with pytest.raises(BadRequest) as caught:
            audit_event_page(tenant=trail, limit=limit)
        assert caught.value.param == "limit"


def test_a_page_costs_a_fixed_number_of_queries(trail, django_assert_num_queries):
    with django_assert_num_queries(1):
        first = audit_event_page(tenant=trail, limit=5)
    with django_assert_num_queries(2):  # the page, and "is there anything newer?"
        audit_event_page(tenant=trail, cursor=first.next_cursor, limit=5)
    since = AuditFilter(since=timezone.now() - timedelta(hours=30), action="key.revoked")
    with django_assert_num_queries(2):  # time to seq, then the page
        audit_event_page(tenant=trail, filters=since, limit=5)


def test_actions_seen(trail):
    assert audit_actions_seen(tenant=trail) == [
        "key.revoked",
        "policy.changed",
        "secret.issued",
        "session.refused",
        "tenant.created",
    ]


@pytest.mark.postgres
def test_every_viewer_query_reads_an_index_in_order(tenant, other_tenant):
    """At any size: no sequential scan, no sort; each filter walks its (chain, …, seq) index."""
    bulk_chain(tenant, 6_000, step=timedelta(seconds=30))  # 50 hours from now on
    bulk_chain(other_tenant, 6_000, step=timedelta(seconds=30))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE audit_auditevent")
    since = timezone.now() + timedelta(hours=10)
    seq_range = audit_seq_range(
        tenant=tenant, filters=AuditFilter(since=since, until=since + timedelta(hours=5))
    )
    cases = {
        "auditevent_chain_seq_unique": AuditFilter(),
        "audit_chain_action": AuditFilter(action="session.refused"),
        "audit_chain_actor": AuditFilter(actor="user1"),
        "audit_chain_target": AuditFilter(target_type="tokens.clientsecret", target_id="77"),
        "audit_chain_request": AuditFilter(request_id="req_77"),
    }
    for index, filters in cases.items():
        rows = audit_event_queryset(tenant=tenant, filters=filters, seq_range=seq_range)
        plan = rows.filter(seq__lt=seq_range.high - 10).order_by("-seq")[:51].explain()
        assert index in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "Sort" not in plan, plan
    edge = (
        AuditEvent.objects.filter(chain=chain_for(tenant.pk), created_at__gte=since)
        .order_by("created_at", "seq")
        .values("seq")[:1]
        .explain()
    )
    assert "audit_chain_time" in edge, edge
    assert "Sort" not in edge, edge
