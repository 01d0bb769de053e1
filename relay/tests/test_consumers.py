"""The /v1/realtime consumer through the real ASGI application, the real database and the
configured channel layer; only OpenAI is a fake (relay/tests/fakes.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEvent
from conftest import make_key
from relay.core import (
    CLOSE_MAX_DURATION,
    CLOSE_QUOTA,
    CLOSE_SERVER_RESTART,
    CLOSE_TERMINATED,
    CLOSE_UPSTREAM_FAILED,
    EndReason,
)
from relay.models import RealtimeSession
from relay.services import relay_terminate_sessions
from relay.tests.conftest import client, closing, db, events_until, handshake, make_relay_token, next_event
from tenants.models import Plan, Scope, SessionPolicy, Tenant
from tenants.services import api_key_revoke, quota_override_update
from upstream.errors import UpstreamError
from usage.models import Metric, UsageEvent
from usage.pricing import TokenUsage
from usage.services import quota_used, usage_record

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_relay")]


def append(raw: bytes = b"\x00\x00" * 480) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(raw).decode()})


@db
def session_row(**filters: Any) -> RealtimeSession:
    return RealtimeSession.objects.get(**filters)


@db
def audit_actions(tenant: Tenant | None = None) -> list[str]:
    return list(AuditEvent.objects.filter(tenant=tenant).order_by("seq").values_list("action", flat=True))


@db
def slots_in_use(tenant: Tenant) -> int:
    return quota_used(tenant=tenant, metric=Metric.SESSIONS)


async def wait_ended(session_id: str, timeout: float = 3) -> RealtimeSession:
    async with asyncio.timeout(timeout):
        while True:
            row = await session_row(pk=session_id)
            if row.status == RealtimeSession.Status.ENDED:
                return row
            await asyncio.sleep(0.02)


# --- opening and relaying ---------------------------------------------------------------------


async def test_api_key_opens_a_relayed_metered_session(tenant, connect_key, fake_openai):
    ws = client(connect_key.plaintext)
    accepted = await handshake(ws)
    assert accepted == {"type": "websocket.accept", "subprotocol": None}
    created = await next_event(ws)
    assert created["type"] == "session.created"
    row = await session_row(tenant=tenant)
    assert row.status == RealtimeSession.Status.ACTIVE
    assert row.api_key_id == connect_key.api_key.pk
    assert row.credential == RealtimeSession.Credential.API_KEY
    assert row.client_ip == "203.0.113.7"
    assert await slots_in_use(tenant) == 1
    upstream = fake_openai.sockets[0]
    assert fake_openai.calls[0] == {"model": "gpt-realtime", "session_id_hint": row.pk}

    for _ in range(5):
        await ws.send_to(text_data=append())  # 5 x 20 ms of PCM16
    await ws.send_to(text_data='{"type":"response.create"}')
    events = await events_until(ws, lambda e: e["type"] == "response.done")
    assert [e["type"] for e in events][-1] == "response.done"
    assert len(upstream.client_events("input_audio_buffer.append")) == 5

    @db
    def metered() -> UsageEvent:
        return UsageEvent.objects.get(natural_key__startswith=f"resp:{row.pk}:")

    async with asyncio.timeout(3):
        while not await db(UsageEvent.objects.filter(kind=UsageEvent.Kind.RESPONSE).exists)():
            await asyncio.sleep(0.02)
    event = await metered()
    assert event.input_text_tokens == 119
    assert event.output_audio_tokens == 91
    assert event.audio_in_ms == 100
    assert event.cost_usd > 0
    assert await db(quota_used)(tenant=tenant, metric=Metric.TOKENS) == 253  # charged now, not at close

    await ws.disconnect()
    row = await wait_ended(row.pk)
    assert row.end_reason == EndReason.CLIENT_CLOSED
    assert row.close_code == 1000
    assert row.input_tokens == 132
    assert row.output_tokens == 121
    assert row.cost_usd == event.cost_usd
    assert row.frames_in == 6
    assert await slots_in_use(tenant) == 0
    actions = await audit_actions(tenant)
    assert actions[-2:] == ["session.opened", "session.ended"]
    assert upstream.closed_with == 1000


async def test_browser_subprotocol_carries_the_key_and_realtime_is_echoed(tenant, connect_key, fake_openai):
    ws = client(subprotocols=["realtime", f"openai-insecure-api-key.{connect_key.plaintext}"])
    assert await handshake(ws) == {"type": "websocket.accept", "subprotocol": "realtime"}
    await ws.disconnect()


async def test_browser_subprotocol_alone_is_echoed_back(tenant, connect_key, fake_openai):
    protocol = f"openai-insecure-api-key.{connect_key.plaintext}"
    ws = client(subprotocols=[protocol])
    assert await handshake(ws) == {"type": "websocket.accept", "subprotocol": protocol}
    await ws.disconnect()


async def test_policy_config_reaches_upstream_before_client_events(tenant, connect_key, fake_openai):
    @db
    def set_policy() -> None:
        SessionPolicy.objects.filter(tenant=tenant).update(
            instructions_prefix="Always be polite.", allowed_voices=["marin"], locked_fields=["instructions"]
        )

    await set_policy()
    ws = client(connect_key.plaintext)
    await handshake(ws)
    created = await next_event(ws)
    assert created["session"]["instructions"] == "Always be polite."
    assert created["session"]["audio"]["output"]["voice"] == "marin"
    await ws.send_to(
        text_data=json.dumps(
            {
                "type": "session.update",
                "event_id": "c1",
                "session": {"type": "realtime", "instructions": "Be rude."},
            }
        )
    )
    error = await next_event(ws)
    assert error["error"]["code"] == "locked_parameter"
    assert error["error"]["event_id"] == "c1"
    upstream = fake_openai.sockets[0]
    assert [e["session"].get("instructions") for e in upstream.client_events("session.update")] == [
        "Always be polite."
    ]
    await ws.disconnect()


# --- refusals happen on the handshake -------------------------------------------------------------


async def refused(ws: Any) -> dict[str, Any]:
    answer = await handshake(ws)
    assert answer["type"] == "denied", answer
    answer["error"] = json.loads(answer["body"])["error"]
    return answer


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("no_credential", 401, "missing_api_key"),
        ("garbage", 401, "invalid_api_key"),
        ("not_bearer", 401, "invalid_api_key"),
        ("unknown_key", 401, "invalid_api_key"),
        ("revoked_key", 401, "api_key_revoked"),
        ("expired_key", 401, "api_key_expired"),
        ("wrong_scope", 403, "insufficient_scope"),
        ("suspended", 403, "tenant_suspended"),
        ("model_not_allowed", 403, "model_not_allowed"),
        ("no_model", 400, "missing_required_parameter"),
        ("sessions_full", 429, "concurrent_session_limit"),
        ("tokens_used_up", 429, "insufficient_quota"),
    ],
)
async def test_refusals_happen_on_the_handshake(tenant, connect_key, fake_openai, setup, status, code):
    credential: str | None = connect_key.plaintext
    headers = None
    model = "gpt-realtime"

    @db
    def prepare() -> str | None:
        nonlocal headers, model
        if setup == "no_credential":
            return None
        if setup == "garbage":
            return "sk-not-ours"
        if setup == "not_bearer":
            headers = [(b"authorization", b"Basic dXNlcjpwdw==")]
            return None
        if setup == "unknown_key":
            return make_key(tenant).plaintext[:-12] + "A" * 6 + make_key(tenant).plaintext[-6:]
        if setup == "revoked_key":
            api_key_revoke(api_key=connect_key.api_key, actor=_actor())
        if setup == "expired_key":
            connect_key.api_key.__class__.objects.filter(pk=connect_key.api_key.pk).update(
                expires_at=timezone.now() - timedelta(seconds=1)
            )
        if setup == "wrong_scope":
            return make_key(tenant, scopes=[Scope.SECRETS_CREATE]).plaintext
        if setup == "suspended":
            Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
        if setup == "model_not_allowed":
            SessionPolicy.objects.filter(tenant=tenant).update(allowed_models=["gpt-realtime-mini"])
        if setup == "no_model":
            model = None
        if setup == "sessions_full":
            quota_override_update(tenant=tenant, actor=_actor(), values={"concurrent_sessions": 0})
        if setup == "tokens_used_up":
            quota_override_update(tenant=tenant, actor=_actor(), values={"tokens_per_month": 100})
            usage_record(
                tenant=tenant,
                kind=UsageEvent.Kind.RESPONSE,
                natural_key="resp:old:1",
                model="gpt-realtime",
                tokens=TokenUsage(input_text=150),
            )
        return credential

    credential = await prepare()
    ws = client(credential, model=model, headers=headers)
    answer = await refused(ws)
    assert answer["status"] == status
    assert answer["error"]["code"] == code
    assert answer["headers"][b"content-type"] == b"application/json"
    if status == 401:
        assert answer["headers"][b"www-authenticate"].startswith(b"Bearer")
    assert fake_openai.calls == []  # nothing reached upstream
    assert not await db(RealtimeSession.objects.exists)()
    assert await slots_in_use(tenant) == 0

    @db
    def refusal() -> AuditEvent:
        return AuditEvent.objects.filter(action="session.refused").get()

    audited = await refusal()
    assert audited.details["code"] == code
    assert audited.details["status"] == status
    identified = setup not in ("no_credential", "garbage", "not_bearer", "unknown_key")
    assert (audited.tenant_id == tenant.pk) is identified
    assert connect_key.plaintext not in json.dumps(audited.details)


def _actor() -> Actor:
    return Actor.system("tests")


async def test_a_lost_database_on_the_handshake_is_a_503_to_retry(
    tenant, connect_key, fake_openai, monkeypatch
):
    """The database is unreachable while the handshake is checked (the fault matrix kills real
    backends; here the driver's error is raised where it would surface): one retry, then 503."""
    from django.db import OperationalError

    attempts: list[str] = []

    def lost(**kwargs: Any) -> Any:
        attempts.append(kwargs["credential"])
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("relay.consumers.relay_session_open", lost)
    answer = await refused(client(connect_key.plaintext))
    assert len(attempts) == 2  # one retry on a fresh connection, then the refusal
    assert answer["status"] == 503
    assert answer["error"]["code"] == "database_unavailable"
    assert answer["headers"][b"retry-after"] == b"1"
    assert "Traceback" not in answer["body"].decode()
    assert fake_openai.calls == []


async def test_without_the_denial_extension_a_refusal_closes_before_accept(tenant, fake_openai):
    ws = client("rtp_sk_nonsense", denial_extension=False)
    assert await handshake(ws) == {"type": "websocket.close"}  # daphne answers this with HTTP 403
    assert fake_openai.calls == []


# --- relay tokens (CONTRACTS §3) ---------------------------------------------------------------


async def test_relay_token_opens_one_session_with_its_config(tenant, api_key, fake_openai):
    token, secret = await db(make_relay_token)(tenant, api_key.api_key)
    ws = client(token)
    assert (await handshake(ws))["type"] == "websocket.accept"
    created = await next_event(ws)
    assert created["session"]["instructions"] == "Token instructions."
    row = await session_row(tenant=tenant)
    assert row.client_secret_id == secret.pk
    assert row.credential == RealtimeSession.Credential.RELAY_TOKEN
    await db(secret.refresh_from_db)()
    assert secret.status == "used"
    assert secret.used_at is not None

    second = await refused(client(token))
    assert second["status"] == 401
    assert second["error"]["code"] == "relay_token_used"
    await ws.disconnect()


@pytest.mark.parametrize(
    ("change", "code", "status"),
    [
        ({"status": "revoked"}, "relay_token_revoked", 401),
        ({"status": "expired"}, "relay_token_expired", 401),
        ({"expires_at_offset": -1}, "relay_token_expired", 401),
        ({"model": "gpt-realtime-mini"}, "model_not_allowed", 403),
        ({"key_revoked": True}, "api_key_revoked", 401),
    ],
)
async def test_unusable_relay_tokens_are_refused(tenant, api_key, fake_openai, change, code, status):
    @db
    def prepare() -> str:
        fields: dict[str, Any] = {}
        if "status" in change:
            fields["status"] = change["status"]
        if "expires_at_offset" in change:
            fields["expires_at"] = timezone.now() + timedelta(seconds=change["expires_at_offset"])
        if "model" in change:
            fields["model"] = change["model"]
        if change.get("key_revoked"):
            api_key_revoke(api_key=api_key.api_key, actor=_actor())
        token, _ = make_relay_token(tenant, api_key.api_key, **fields)
        return token

    answer = await refused(client(await prepare()))
    assert answer["status"] == status
    assert answer["error"]["code"] == code
    assert fake_openai.calls == []


async def test_a_refused_token_is_not_consumed(tenant, api_key, fake_openai):
    token, secret = await db(make_relay_token)(tenant, api_key.api_key)
    await db(quota_override_update)(tenant=tenant, actor=_actor(), values={"concurrent_sessions": 0})
    answer = await refused(client(token))
    assert answer["status"] == 429
    await db(secret.refresh_from_db)()
    assert secret.status == "active"  # the refusal rolled the redemption back


async def test_one_hundred_concurrent_redemptions_open_exactly_one_session(tenant, api_key, fake_openai):
    token, _ = await db(make_relay_token)(tenant, api_key.api_key)
    sockets = [client(token) for _ in range(100)]
    answers = await asyncio.gather(*(handshake(ws, timeout=20) for ws in sockets))
    accepted = [a for a in answers if a["type"] == "websocket.accept"]
    assert len(accepted) == 1
    denied = [json.loads(a["body"])["error"]["code"] for a in answers if a["type"] == "denied"]
    assert denied == ["relay_token_used"] * 99
    assert await db(RealtimeSession.objects.count)() == 1
    for ws, answer in zip(sockets, answers, strict=True):
        if answer["type"] == "websocket.accept":
            await ws.disconnect()


# --- enforcement while the session runs ------------------------------------------------------


async def test_tenant_quota_used_up_by_a_response_cuts_every_session_of_the_tenant(
    tenant, connect_key, fake_openai
):
    await db(quota_override_update)(tenant=tenant, actor=_actor(), values={"tokens_per_month": 300})
    first, second = client(connect_key.plaintext), client(connect_key.plaintext)
    await handshake(first)
    await handshake(second)
    await next_event(first)
    await next_event(second)
    await first.send_to(text_data='{"type":"response.create"}')  # 253 tokens: under the limit
    await events_until(first, lambda e: e["type"] == "response.done")
    await first.send_to(text_data='{"type":"response.create"}')  # 506: over it
    events, code = await closing(first)
    assert code == CLOSE_QUOTA
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "insufficient_quota"
    assert "token" in events[-1]["error"]["message"]
    other_events, other_code = await closing(second)  # the other session, told through the channel layer
    assert other_code == CLOSE_QUOTA
    assert other_events[-1]["error"]["code"] == "insufficient_quota"
    rows = [await wait_ended(row.pk) for row in await db(lambda: list(RealtimeSession.objects.all()))()]
    assert [row.end_reason for row in rows] == [EndReason.QUOTA_EXCEEDED] * 2
    assert await db(UsageEvent.objects.filter(kind=UsageEvent.Kind.RESPONSE).count)() == 2  # both kept
    assert await slots_in_use(tenant) == 0


async def test_relay_token_cost_ceiling_ends_the_session(tenant, api_key, fake_openai):
    token, _ = await db(make_relay_token)(tenant, api_key.api_key, cost_ceiling_usd="0.0001")
    ws = client(token)
    await handshake(ws)
    await next_event(ws)
    await ws.send_to(text_data='{"type":"response.create"}')
    events, code = await closing(ws)
    assert code == CLOSE_QUOTA
    assert events[-1]["error"]["code"] == "session_cost_limit_reached"
    row = await wait_ended((await session_row(tenant=tenant)).pk)
    assert row.end_reason == EndReason.COST_CEILING
    assert row.cost_usd > 0


async def test_maximum_session_duration_from_the_policy(tenant, connect_key, fake_openai):
    await db(SessionPolicy.objects.filter(tenant=tenant).update)(max_session_seconds=1)
    ws = client(connect_key.plaintext)
    await handshake(ws)
    events, code = await closing(ws)
    assert code == CLOSE_MAX_DURATION
    assert events[-1]["error"]["code"] == "session_expired"
    assert (await wait_ended((await session_row(tenant=tenant)).pk)).end_reason == EndReason.MAX_DURATION


async def test_revoked_key_is_found_by_the_heartbeat_even_without_a_kill_switch_message(
    tenant, connect_key, fake_openai
):
    ws = client(connect_key.plaintext)
    await handshake(ws)
    await next_event(ws)
    await db(api_key_revoke)(api_key=connect_key.api_key, actor=_actor())  # no relay_terminate_sessions call
    events, code = await closing(ws)
    assert code == CLOSE_TERMINATED
    assert "revoked" in events[-1]["error"]["message"]


# --- kill switch ---------------------------------------------------------------------------------


async def test_kill_switch_closes_the_targeted_sessions_only(tenant, other_tenant, connect_key, fake_openai):
    other_key = await db(make_key)(tenant, scopes=[Scope.REALTIME_CONNECT])
    outsider_key = await db(make_key)(other_tenant, scopes=[Scope.REALTIME_CONNECT])
    mine, sibling, outsider = (
        client(connect_key.plaintext),
        client(other_key.plaintext),
        client(outsider_key.plaintext),
    )
    for ws in (mine, sibling, outsider):
        await handshake(ws)
        await next_event(ws)
    count = await db(relay_terminate_sessions)(
        tenant_id=tenant.pk, api_key_id=connect_key.api_key.pk, reason=EndReason.KEY_REVOKED
    )
    assert count == 1
    events, code = await closing(mine)
    assert code == CLOSE_TERMINATED
    assert events[-1]["error"]["code"] == "session_terminated"
    # another tenant's id with this tenant's key id reaches nobody
    assert (
        await db(relay_terminate_sessions)(
            tenant_id=other_tenant.pk, api_key_id=other_key.api_key.pk, reason=EndReason.TERMINATED
        )
        == 0
    )
    await asyncio.sleep(0.3)
    assert await sibling.receive_nothing(0.1)
    assert await outsider.receive_nothing(0.1)
    row = await wait_ended((await session_row(api_key=connect_key.api_key)).pk)
    assert row.end_reason == EndReason.KEY_REVOKED
    await sibling.disconnect()
    await outsider.disconnect()


async def test_kill_switch_by_relay_token_and_by_session(tenant, api_key, connect_key, fake_openai):
    token, secret = await db(make_relay_token)(tenant, api_key.api_key)
    by_token, by_session = client(token), client(connect_key.plaintext)
    for ws in (by_token, by_session):
        await handshake(ws)
        await next_event(ws)
    await db(relay_terminate_sessions)(
        tenant_id=tenant.pk, client_secret_id=secret.pk, reason=EndReason.SECRET_REVOKED
    )
    _, code = await closing(by_token)
    assert code == CLOSE_TERMINATED
    row = await session_row(api_key=connect_key.api_key)
    await db(relay_terminate_sessions)(tenant_id=tenant.pk, session_id=row.pk, reason=EndReason.TERMINATED)
    events, code = await closing(by_session)
    assert code == CLOSE_TERMINATED
    assert "administrator" in events[-1]["error"]["message"]


async def _kill_switch_with(n: int, tenant: Any, connect_key: Any) -> float:
    sockets = [client(connect_key.plaintext) for _ in range(n)]
    await asyncio.gather(*(handshake(ws, timeout=20) for ws in sockets))
    await asyncio.gather(*(next_event(ws, timeout=10) for ws in sockets))
    loop = asyncio.get_running_loop()
    started = loop.time()
    count = await db(relay_terminate_sessions)(tenant_id=tenant.pk, reason=EndReason.TENANT_SUSPENDED)
    results = await asyncio.gather(*(closing(ws, timeout=5) for ws in sockets))
    elapsed = loop.time() - started
    assert count == n
    assert {code for _, code in results} == {CLOSE_TERMINATED}
    for row in await db(lambda: list(RealtimeSession.objects.all()))():
        assert (await wait_ended(row.pk)).end_reason == EndReason.TENANT_SUSPENDED
    return elapsed


async def test_kill_switch_reaches_live_sessions(tenant, connect_key, fake_openai):
    await db(quota_override_update)(tenant=tenant, actor=_actor(), values={"concurrent_sessions": 5})
    assert await _kill_switch_with(5, tenant, connect_key) < 2.0


@pytest.mark.redis
async def test_kill_switch_closes_fifty_sessions_within_two_seconds_over_redis(
    tenant, connect_key, fake_openai
):
    from channels.layers import get_channel_layer
    from channels_redis.core import RedisChannelLayer

    assert isinstance(get_channel_layer(), RedisChannelLayer)
    await db(Plan.objects.filter(pk=tenant.plan_id).update)(concurrent_sessions=50)
    assert await _kill_switch_with(50, tenant, connect_key) < 2.0
    assert await slots_in_use(tenant) == 0


# --- faults and ends -------------------------------------------------------------------------------


async def test_upstream_drop_mid_stream_ends_cleanly_and_keeps_usage(tenant, connect_key, fake_openai):
    ws = client(connect_key.plaintext)
    await handshake(ws)
    await next_event(ws)
    await ws.send_to(text_data='{"type":"response.create"}')
    await events_until(ws, lambda e: e["type"] == "response.done")
    fake_openai.sockets[0].drop()
    events, code = await closing(ws)
    assert code == CLOSE_UPSTREAM_FAILED
    assert events[-1]["error"]["code"] == "upstream_disconnected"
    row = await wait_ended((await session_row(tenant=tenant)).pk)
    assert row.end_reason == EndReason.UPSTREAM_LOST
    assert row.output_tokens == 121  # metered before the drop, kept
    assert await slots_in_use(tenant) == 0


async def test_upstream_refusing_the_connection(tenant, connect_key, fake_openai):
    fake_openai.error = UpstreamError("server busy", status=503)
    ws = client(connect_key.plaintext)
    assert (await handshake(ws))["type"] == "websocket.accept"
    events, code = await closing(ws)
    assert code == CLOSE_UPSTREAM_FAILED
    assert events[-1]["error"]["code"] == "upstream_unavailable"
    row = await wait_ended((await session_row(tenant=tenant)).pk)
    assert row.end_reason == EndReason.UPSTREAM_REFUSED
    assert await slots_in_use(tenant) == 0


async def test_client_vanishing_without_a_close_frame(tenant, connect_key, fake_openai):
    ws = client(connect_key.plaintext)
    await handshake(ws)
    await next_event(ws)
    await ws.send_to(text_data=append())
    await ws.send_input({"type": "websocket.disconnect", "code": 1006})
    row = await wait_ended((await session_row(tenant=tenant)).pk)
    assert row.end_reason == EndReason.CLIENT_GONE
    assert row.audio_in_ms == 20
    assert await slots_in_use(tenant) == 0
    assert fake_openai.sockets[0].closed_with == 1000
    await ws.wait(1)


async def test_server_shutdown_closes_with_1012(tenant, connect_key, fake_openai):
    ws = client(connect_key.plaintext)
    await handshake(ws)
    await next_event(ws)
    ws.future.cancel()  # what daphne does to every application when it stops
    events, code = await closing(ws)
    assert code == CLOSE_SERVER_RESTART
    assert events[-1]["error"]["code"] == "server_shutting_down"
    row = await wait_ended((await session_row(tenant=tenant)).pk)
    assert row.end_reason == EndReason.SERVER_SHUTDOWN
    assert await slots_in_use(tenant) == 0


@pytest.mark.parametrize("change", ["revoke_key", "rotate_key", "suspend_tenant"])
async def test_revoking_or_suspending_reaches_live_sessions_through_the_kill_switch(
    tenant, connect_key, fake_openai, settings, change
):
    settings.RELAY_HEARTBEAT_SECONDS = 60  # so only the kill-switch message can explain the close
    ws = client(connect_key.plaintext)
    await handshake(ws)
    await next_event(ws)

    @db
    def act() -> None:
        from tenants.services import api_key_rotate, tenant_set_status

        if change == "revoke_key":
            api_key_revoke(api_key=connect_key.api_key, actor=_actor())
        elif change == "rotate_key":
            api_key_rotate(api_key=connect_key.api_key, actor=_actor())
        else:
            tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, actor=_actor())

    loop = asyncio.get_running_loop()
    started = loop.time()
    await act()
    events, code = await closing(ws)
    assert loop.time() - started < 2.0
    assert code == CLOSE_TERMINATED
    expected = EndReason.TENANT_SUSPENDED if change == "suspend_tenant" else EndReason.KEY_REVOKED
    assert (await wait_ended((await session_row(tenant=tenant)).pk)).end_reason == expected
    assert events[-1]["error"]["code"] == "session_terminated"


async def test_revoking_a_used_relay_token_ends_its_live_session(tenant, api_key, fake_openai, settings):
    settings.RELAY_HEARTBEAT_SECONDS = 60  # only the kill-switch message can explain the close
    token, secret = await db(make_relay_token)(tenant, api_key.api_key)
    ws = client(token)
    await handshake(ws)
    await next_event(ws)

    @db
    def revoke() -> None:
        from tokens.services import client_secret_revoke

        secret.refresh_from_db()
        client_secret_revoke(secret=secret, actor=_actor())

    await revoke()
    events, code = await closing(ws)
    assert code == CLOSE_TERMINATED
    assert "relay token" in events[-1]["error"]["message"]
    assert (await wait_ended((await session_row(tenant=tenant)).pk)).end_reason == EndReason.SECRET_REVOKED


async def test_the_sockets_request_id_reaches_its_audit_rows(tenant, connect_key, fake_openai):
    ws = client(connect_key.plaintext, headers=[(b"x-request-id", b"req_from_client_42")])
    await handshake(ws)
    await next_event(ws)
    await ws.disconnect()
    await wait_ended((await session_row(tenant=tenant)).pk)

    @db
    def request_ids() -> list[str]:
        return list(
            AuditEvent.objects.filter(action__startswith="session.").values_list("request_id", flat=True)
        )

    assert await request_ids() == ["req_from_client_42", "req_from_client_42"]


async def test_a_connection_lost_once_on_the_handshake_is_retried(connect_key, fake_openai, monkeypatch):
    """A pooled connection that died (a restart, a failover) fails the first attempt only."""
    from django.db import OperationalError

    from relay import consumers

    real = consumers.relay_session_open
    failures = [OperationalError("terminating connection due to administrator command")]

    def once(**kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(**kwargs)

    monkeypatch.setattr("relay.consumers.relay_session_open", once)
    ws = client(connect_key.plaintext)
    answer = await handshake(ws)
    assert answer["type"] == "websocket.accept", answer
    assert failures == []
    await ws.disconnect()


async def test_metering_and_the_end_survive_a_connection_lost_once(
    tenant, connect_key, fake_openai, monkeypatch
):
    """A response's usage and the session's end are retried once on a fresh connection (both are
    idempotent), so a pooled connection that died costs neither a ledger row nor the slot."""
    from django.db import InterfaceError, OperationalError

    from relay import consumers

    lost: dict[str, list[Exception]] = {
        "relay_session_meter": [OperationalError("server closed the connection unexpectedly")],
        "relay_session_end": [InterfaceError("connection already closed")],
    }
    for name in lost:
        real = getattr(consumers, name)

        def once(real: Any = real, name: str = name, **kwargs: Any) -> Any:
            if lost[name]:
                raise lost[name].pop()
            return real(**kwargs)

        monkeypatch.setattr(f"relay.consumers.{name}", once)

    ws = client(connect_key.plaintext)
    assert (await handshake(ws))["type"] == "websocket.accept"
    await next_event(ws)  # session.created
    await ws.send_to(text_data='{"type":"response.create"}')
    await events_until(ws, lambda e: e["type"] == "response.done")
    await ws.disconnect()
    row = await wait_ended((await db(RealtimeSession.objects.get)()).pk)

    assert lost == {"relay_session_meter": [], "relay_session_end": []}  # each failed once
    assert row.end_reason == EndReason.CLIENT_CLOSED
    assert await db(UsageEvent.objects.filter(kind=UsageEvent.Kind.RESPONSE, session_id=row.pk).count)() == 1
    assert await slots_in_use(tenant) == 0
