from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from conftest import make_key
from relay.models import RealtimeSession
from relay.sweeps import realtime_session_stale_sweep
from usage.models import Metric, UsageEvent, UsageRollupPending
from usage.services import quota_reserve, quota_used


def open_session(tenant, *, api_key=None, seen_ago: timedelta, model="gpt-realtime"):
    """What the relay does on connect: take a slot, then create the session row (noting whether
    the key's own counter was debited too)."""
    reservation = quota_reserve(tenant=tenant, metric=Metric.SESSIONS, api_key=api_key)
    return RealtimeSession.objects.create(
        tenant=tenant,
        api_key=api_key,
        model=model,
        last_seen_at=timezone.now() - seen_ago,
        slot_key_held=reservation.api_key_id is not None,
    )


@pytest.mark.django_db
def test_stale_sessions_end_and_free_their_slots(tenant, settings):
    settings.RELAY_SESSION_STALE_SECONDS = 120
    limited = make_key(tenant, name="kiosk", concurrent_sessions=2).api_key
    plain = make_key(tenant, name="web").api_key
    dead = open_session(tenant, api_key=limited, seen_ago=timedelta(minutes=5))
    dead_plain = open_session(tenant, api_key=plain, seen_ago=timedelta(seconds=121))
    alive = open_session(tenant, api_key=limited, seen_ago=timedelta(seconds=10))
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 3
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS, api_key=limited) == 2

    assert realtime_session_stale_sweep() == 2

    dead.refresh_from_db()
    assert (dead.status, dead.end_reason) == (RealtimeSession.Status.ENDED, "stale")
    assert dead.ended_at is not None
    dead_plain.refresh_from_db()
    assert dead_plain.end_reason == "stale"
    alive.refresh_from_db()
    assert alive.status == RealtimeSession.Status.ACTIVE
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 1
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS, api_key=limited) == 1
    ended = UsageEvent.objects.get(natural_key=f"session:{dead.id}")
    assert (ended.kind, ended.api_key_id, ended.model) == (
        UsageEvent.Kind.SESSION_ENDED,
        limited.pk,
        "gpt-realtime",
    )
    assert UsageRollupPending.objects.filter(tenant=tenant).exists()
    audits = AuditEvent.objects.filter(tenant=tenant, action="session.ended").order_by("seq")
    assert sorted(a.target_id for a in audits) == sorted([dead.id, dead_plain.id])
    assert audits[0].details["reason"] == "stale"
    assert audits[0].actor_type == "system"

    # A second run, or a relay that finishes late, finds nothing active to release again.
    assert realtime_session_stale_sweep() == 0
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 1


@pytest.mark.django_db
def test_the_key_slot_is_released_as_it_was_taken_even_if_the_key_limit_changed(tenant, system_actor):
    limited = make_key(tenant, name="kiosk", concurrent_sessions=2).api_key
    open_session(tenant, api_key=limited, seen_ago=timedelta(minutes=5))
    from tenants.services import api_key_settings_update

    api_key_settings_update(api_key=limited, actor=system_actor, values={"concurrent_sessions": None})
    assert realtime_session_stale_sweep() == 1
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS, api_key=limited) == 0


@pytest.mark.django_db
def test_a_relay_ending_after_the_sweep_still_meters_its_leftover_audio(tenant):
    from relay.services import relay_session_end

    session = open_session(tenant, seen_ago=timedelta(hours=1))
    assert realtime_session_stale_sweep() == 1
    relay_session_end(session_id=session.id, reason="client_closed", close_code=1000, audio_in_ms=4200)
    assert UsageEvent.objects.filter(natural_key=f"session:{session.id}").count() == 1
    tail = UsageEvent.objects.get(natural_key=f"audio:{session.id}")
    assert (tail.kind, tail.audio_in_ms) == (UsageEvent.Kind.AUDIO, 4200)
    assert quota_used(tenant=tenant, metric=Metric.AUDIO_MS) == 4200
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0  # released once, by the sweep


@pytest.mark.django_db
def test_a_session_ended_event_already_written_by_the_relay_is_kept(tenant):
    session = open_session(tenant, seen_ago=timedelta(hours=1))
    UsageEvent.objects.create(
        tenant=tenant,
        kind=UsageEvent.Kind.SESSION_ENDED,
        natural_key=f"session:{session.id}",
        audio_in_ms=5000,
    )
    assert realtime_session_stale_sweep() == 1
    assert UsageEvent.objects.get(natural_key=f"session:{session.id}").audio_in_ms == 5000


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_release_each_slot_once(tenant):
    for _ in range(20):
        open_session(tenant, seen_ago=timedelta(hours=1))
    for _ in range(5):
        open_session(tenant, seen_ago=timedelta(seconds=1))
    counts = []
    barrier = threading.Barrier(4)

    def sweep():
        barrier.wait()
        try:
            counts.append(realtime_session_stale_sweep(batch_size=3))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 20
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 5
    assert AuditEvent.objects.filter(tenant=tenant, action="session.ended").count() == 20
