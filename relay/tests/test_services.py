"""Relay services against the real database: opening, metering once, heartbeat checks, ending and
the stale sweep releasing each slot exactly once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEvent
from relay.core import EndReason
from relay.models import RealtimeSession
from relay.services import (
    relay_session_end,
    relay_session_heartbeat,
    relay_session_meter,
    relay_session_open,
)
from relay.tests.conftest import make_relay_token
from relay.tests.fakes import USAGE, FakeConnector
from tenants.models import SessionPolicy, Tenant
from tenants.services import api_key_revoke, quota_override_update
from tokens.models import ClientSecret
from usage.models import Metric, UsageEvent
from usage.services import quota_used

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fake_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("relay.services.upstream_connector_for", lambda tenant: FakeConnector())


def slots(tenant: Any, api_key: Any = None) -> int:
    return quota_used(tenant=tenant, metric=Metric.SESSIONS, api_key=api_key)


def test_open_reserves_a_slot_on_the_tenant_and_on_a_key_with_its_own_limit(tenant):
    from conftest import make_key

    limited = make_key(tenant, concurrent_sessions=2)
    grant = relay_session_open(credential=limited.plaintext, model="gpt-realtime")
    session = RealtimeSession.objects.get(pk=grant.session_id)
    assert session.slot_key_held
    assert slots(tenant) == 1
    assert slots(tenant, limited.api_key) == 1
    relay_session_end(session_id=session.pk, reason=EndReason.CLIENT_CLOSED, close_code=1000)
    assert slots(tenant) == 0
    assert slots(tenant, limited.api_key) == 0


def test_relay_token_limits_take_the_strictest_duration_and_the_tokens_ceiling(tenant, api_key):
    SessionPolicy.objects.filter(tenant=tenant).update(
        max_session_seconds=600, session_cost_ceiling_usd=Decimal("5")
    )
    token, _ = make_relay_token(tenant, api_key.api_key, max_session_seconds=120, cost_ceiling_usd="0.50")
    grant = relay_session_open(credential=token, model=None)  # the token names the model
    assert grant.model == "gpt-realtime"
    assert grant.max_session_seconds == 120
    assert grant.cost_ceiling_usd == Decimal("0.50")
    assert grant.session_config == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Token instructions.",
    }
    assert set(grant.groups) == {
        f"relay.tenant.{tenant.pk}",
        f"relay.key.{api_key.api_key.pk}",
        f"relay.secret.{grant.client_secret_id}",
        f"relay.session.{grant.session_id}",
    }


def test_api_key_session_gets_the_policy_config_and_limits(tenant, api_key):
    SessionPolicy.objects.filter(tenant=tenant).update(
        instructions_prefix="Stay on topic.",
        allowed_voices=["cedar", "marin"],
        max_output_tokens_ceiling=500,
        max_session_seconds=900,
        session_cost_ceiling_usd=Decimal("2"),
        locked_fields=["tools"],
    )
    grant = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    assert grant.session_config == {
        "type": "realtime",
        "instructions": "Stay on topic.",
        "audio": {"output": {"voice": "cedar"}},
        "max_output_tokens": 500,
    }
    assert grant.max_session_seconds == 900
    assert grant.cost_ceiling_usd == Decimal("2")
    assert grant.rules.locked_fields == frozenset({"tools"})


def test_a_response_is_metered_once(tenant, api_key):
    grant = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    first = relay_session_meter(
        session_id=grant.session_id, response_id="resp_1", usage=USAGE, audio_in_ms=500
    )
    replay = relay_session_meter(
        session_id=grant.session_id, response_id="resp_1", usage=USAGE, audio_in_ms=500
    )
    assert first.recorded
    assert not replay.recorded
    assert UsageEvent.objects.filter(kind=UsageEvent.Kind.RESPONSE).count() == 1
    assert quota_used(tenant=tenant, metric=Metric.TOKENS) == 253
    assert quota_used(tenant=tenant, metric=Metric.AUDIO_MS) == 500
    session = RealtimeSession.objects.get(pk=grant.session_id)
    assert session.cost_usd == first.session_cost_usd == replay.session_cost_usd
    assert session.input_tokens == 132


def test_metering_reports_whose_quota_ran_out(tenant):
    from conftest import make_key

    key = make_key(tenant, cost_usd_per_month=Decimal("0.01"))  # one response costs about $0.007
    grant = relay_session_open(credential=key.plaintext, model="gpt-realtime")
    outcome = relay_session_meter(session_id=grant.session_id, response_id="resp_1", usage=USAGE)
    assert (outcome.tenant_exhausted, outcome.key_exhausted) == ((), ())
    outcome = relay_session_meter(session_id=grant.session_id, response_id="resp_2", usage=USAGE)
    assert outcome.tenant_exhausted == ()
    assert outcome.key_exhausted == (Metric.COST_MICROUSD,)
    quota_override_update(tenant=tenant, actor=Actor.system("t"), values={"tokens_per_month": 700})
    outcome = relay_session_meter(session_id=grant.session_id, response_id="resp_3", usage=USAGE)
    assert outcome.tenant_exhausted == (Metric.TOKENS,)


def heartbeat(session_id: str, pending_audio_ms: int = 0) -> Any:
    return relay_session_heartbeat(
        session_id=session_id,
        frames_in=5,
        frames_out=7,
        bytes_in=50,
        bytes_out=70,
        audio_in_ms=100,
        audio_out_ms=0,
        pending_audio_ms=pending_audio_ms,
        upstream_session_id="sess_1",
    )


def test_heartbeat_keeps_the_row_fresh_and_finds_what_a_lost_message_would_have_said(tenant, api_key):
    grant = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    RealtimeSession.objects.filter(pk=grant.session_id).update(
        last_seen_at=timezone.now() - timedelta(minutes=5)
    )
    outcome = heartbeat(grant.session_id)
    assert outcome.active
    assert outcome.revoked is None
    session = RealtimeSession.objects.get(pk=grant.session_id)
    assert timezone.now() - session.last_seen_at < timedelta(seconds=5)
    assert (session.frames_in, session.audio_in_ms, session.upstream_session_id) == (5, 100, "sess_1")

    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert heartbeat(grant.session_id).revoked == EndReason.TENANT_SUSPENDED
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.ACTIVE)
    api_key_revoke(api_key=api_key.api_key, actor=Actor.system("t"))
    assert heartbeat(grant.session_id).revoked == EndReason.KEY_REVOKED


def test_heartbeat_counts_audio_not_charged_yet_against_the_audio_quota(tenant, api_key):
    quota_override_update(tenant=tenant, actor=Actor.system("t"), values={"audio_minutes_per_month": 1})
    grant = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    assert heartbeat(grant.session_id, pending_audio_ms=59_000).tenant_exhausted == ()
    assert heartbeat(grant.session_id, pending_audio_ms=60_000).tenant_exhausted == (Metric.AUDIO_MS,)


def test_heartbeat_of_a_revoked_relay_token_session(tenant, api_key):
    token, secret = make_relay_token(tenant, api_key.api_key)
    grant = relay_session_open(credential=token, model="gpt-realtime")
    ClientSecret.objects.filter(pk=secret.pk).update(
        status=ClientSecret.Status.REVOKED, revoked_at=timezone.now()
    )
    assert heartbeat(grant.session_id).revoked == EndReason.SECRET_REVOKED


def test_end_records_counters_charges_leftover_audio_and_is_safe_twice(tenant, api_key):
    grant = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    for _ in range(2):
        relay_session_end(
            session_id=grant.session_id,
            reason=EndReason.UPSTREAM_LOST,
            close_code=1011,
            frames_in=10,
            audio_in_ms_total=1500,
            audio_in_ms=700,
            audio_out_ms=300,
        )
    session = RealtimeSession.objects.get(pk=grant.session_id)
    assert session.status == RealtimeSession.Status.ENDED
    assert session.end_reason == EndReason.UPSTREAM_LOST
    assert session.close_code == 1011
    assert session.audio_in_ms == 1500
    assert slots(tenant) == 0  # released once, not twice (the counter never goes below zero either)
    assert quota_used(tenant=tenant, metric=Metric.AUDIO_MS) == 1000
    assert AuditEvent.objects.filter(action="session.ended").count() == 1


def test_stale_sweep_and_relay_end_release_the_slot_once(tenant, api_key):
    """The relay and the stale-session sweep (relay/sweeps.py) agree through the model: whoever
    moves the row from active to ended releases the slot; the other releases nothing."""
    from relay.sweeps import realtime_session_stale_sweep

    stale = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    fresh = relay_session_open(credential=api_key.plaintext, model="gpt-realtime")
    assert slots(tenant) == 2
    RealtimeSession.objects.filter(pk=stale.session_id).update(
        last_seen_at=timezone.now() - timedelta(minutes=10)
    )
    assert realtime_session_stale_sweep() == 1
    assert realtime_session_stale_sweep() == 0
    assert slots(tenant) == 1
    # the relay process was alive after all: its own end keeps the counters, releases nothing more
    relay_session_end(
        session_id=stale.session_id, reason=EndReason.CLIENT_CLOSED, close_code=1000, frames_in=9
    )
    row = RealtimeSession.objects.get(pk=stale.session_id)
    assert row.end_reason == EndReason.STALE
    assert row.frames_in == 9
    assert slots(tenant) == 1
    assert heartbeat(stale.session_id).active is False
    assert RealtimeSession.objects.get(pk=fresh.session_id).status == RealtimeSession.Status.ACTIVE


def test_a_live_session_is_never_stale(tenant, api_key, settings):
    """The relay's heartbeat keeps last_seen_at well inside the sweep's window."""
    assert settings.RELAY_SESSION_STALE_SECONDS >= 3 * settings.RELAY_HEARTBEAT_SECONDS
