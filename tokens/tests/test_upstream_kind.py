"""The upstream kind: the platform calls OpenAI (here the built-in emulator, a live server) and
hands its `ek_` to the client; failures after retries become OpenAI-shaped errors, the quota and
the Idempotency-Key are given back, and the failure is audited."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import async_to_sync
from openai.types.realtime import ClientSecretCreateResponse

from audit.actors import Actor
from audit.models import AuditEvent
from realtime_platform.crypto import keyed_digest
from tenants.models import Tenant
from tenants.services import upstream_credential_set
from tokens.asgi import shutdown_db_threads
from tokens.models import ClientSecret, IdempotencyRecord
from tokens.tests.conftest import issue, set_policy
from usage.models import Metric, UsageEvent
from usage.services import quota_used

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {
    "expires_after": {"anchor": "created_at", "seconds": 120},
    "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
}


@pytest.fixture
def upstream_tenant(tenant, emulator, settings):
    settings.UPSTREAM_MAX_RETRIES = 1  # one retry keeps the failure tests quick
    set_policy(tenant, secret_kind="upstream", instructions_prefix="Rules first.")
    return tenant


def assert_nothing_kept(tenant):
    assert not ClientSecret.objects.exists()
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 0
    assert not IdempotencyRecord.objects.exists()


def test_the_client_gets_openais_ek_and_the_platform_keeps_only_its_fingerprint(
    upstream_tenant, key_client, emulator
):
    response = issue(key_client, BODY, HTTP_X_REQUEST_ID="trace-up-1")
    assert response.status_code == 200, response.content
    body = response.json()
    value = body["value"]
    assert value.startswith("ek_")
    parsed = ClientSecretCreateResponse.model_validate(body)
    assert parsed.session.type == "realtime"
    assert body["session"]["id"].startswith("sess_")  # upstream's session object, as it came

    sent = emulator.requests[-1].json()  # what OpenAI received: the policy applied
    assert sent == {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Rules first.\n\nBe brief.",
        },
    }
    assert body["session"]["instructions"] == "Rules first.\n\nBe brief."

    secret = ClientSecret.objects.get()
    assert secret.kind == ClientSecret.Kind.UPSTREAM
    assert secret.fingerprint == keyed_digest(value, purpose="openai-ek")
    assert secret.last_four == value[-4:]
    assert secret.upstream_session_id == body["session"]["id"]
    assert int(secret.expires_at.timestamp()) == body["expires_at"]
    assert secret.single_use is False
    assert secret.request_id == "trace-up-1"
    assert value not in json.dumps(list(ClientSecret.objects.values()), default=str)
    assert AuditEvent.objects.get(action="secret.issued").details["kind"] == "upstream"
    assert UsageEvent.objects.get().natural_key == f"secret:{secret.pk}"
    assert quota_used(tenant=upstream_tenant, metric=Metric.SECRETS) == 1


def test_a_transient_upstream_failure_is_retried(upstream_tenant, key_client, emulator):
    emulator.faults.next_http(503)
    response = issue(key_client, BODY)
    assert response.status_code == 200
    assert len(emulator.requests) == 2
    assert ClientSecret.objects.count() == 1


def test_upstream_5xx_after_retries_is_a_502_with_quota_and_key_given_back(
    upstream_tenant, key_client, emulator
):
    emulator.faults.next_http(500, times=2)
    response = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    assert "Retry-After" in response
    assert len(emulator.requests) == 2  # the first try and one retry
    assert_nothing_kept(upstream_tenant)
    failed = AuditEvent.objects.get(action="secret.failed")
    assert failed.details["reason"] == "upstream"
    assert failed.details["upstream_status"] == 500
    assert failed.details["status"] == 502
    # the released Idempotency-Key can be retried once OpenAI is back
    again = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again


def test_upstream_rate_limiting_is_a_429_with_its_retry_after(upstream_tenant, key_client, emulator):
    emulator.faults.next_http(429, retry_after=30, code="rate_limit_exceeded", type="requests")
    response = issue(key_client, BODY)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response["Retry-After"] == "30"
    assert len(emulator.requests) == 1  # 30 s is longer than the client waits itself
    assert_nothing_kept(upstream_tenant)


def test_openai_out_of_quota_is_a_non_retryable_429(upstream_tenant, key_client, emulator):
    emulator.faults.next_http(429, code="insufficient_quota", type="insufficient_quota", message="billing")
    response = issue(key_client, BODY)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert response["x-should-retry"] == "false"


def test_an_upstream_timeout_is_a_504(upstream_tenant, key_client, emulator, settings):
    settings.UPSTREAM_READ_TIMEOUT = 0.3
    settings.UPSTREAM_MAX_RETRIES = 0
    emulator.faults.slow(2.0)
    response = issue(key_client, BODY)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert_nothing_kept(upstream_tenant)


def test_openai_refusing_the_session_is_handed_on_as_is(upstream_tenant, key_client, emulator):
    emulator.faults.next_http(
        400, code="invalid_value", type="invalid_request_error", message="No such model."
    )
    response = issue(key_client, BODY)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "No such model.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }
    assert_nothing_kept(upstream_tenant)


def test_a_tenants_own_key_refused_by_openai_is_not_blamed_on_the_client(
    upstream_tenant, key_client, emulator
):
    Tenant.objects.filter(pk=upstream_tenant.pk).update(upstream_mode=Tenant.UpstreamMode.OWN)
    upstream_credential_set(
        tenant=upstream_tenant, secret="sk-proj-wrongwrongwrongwrongwrong", actor=Actor.system("tests")
    )
    response = issue(key_client, BODY)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    assert "wrongwrong" not in response.content.decode()
    assert_nothing_kept(upstream_tenant)


def test_a_tenant_set_to_its_own_key_without_one_gets_a_503_before_any_quota_is_taken(
    upstream_tenant, key_client, emulator
):
    Tenant.objects.filter(pk=upstream_tenant.pk).update(upstream_mode=Tenant.UpstreamMode.OWN)
    response = issue(key_client, BODY)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_key_missing"
    assert emulator.requests == []
    assert AuditEvent.objects.get(action="secret.failed").details["upstream_code"] == "upstream_key_missing"
    assert_nothing_kept(upstream_tenant)


# --- through the fast path (async: the OpenAI call is awaited, no thread held) ------------------


def post_via_asgi(key: str, count: int = 1, **headers: str) -> list[httpx.Response]:
    from realtime_platform.asgi import application

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            import asyncio

            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/v1/realtime/client_secrets",
                            content=json.dumps(BODY).encode(),
                            headers={"Authorization": f"Bearer {key}", **headers},
                        )
                        for _ in range(count)
                    )
                )
            )

    try:
        return async_to_sync(run)()
    finally:
        shutdown_db_threads()


def test_the_fast_path_issues_an_upstream_secret(upstream_tenant, api_key, emulator):
    [response] = post_via_asgi(api_key.plaintext)
    assert response.status_code == 200
    assert response.json()["value"].startswith("ek_")
    assert ClientSecret.objects.get().kind == ClientSecret.Kind.UPSTREAM
    assert emulator.requests[-1].json()["session"]["instructions"] == "Rules first.\n\nBe brief."


def test_the_fast_path_maps_upstream_failures_the_same_way(upstream_tenant, api_key, emulator):
    emulator.faults.next_http(500, times=2)
    [response] = post_via_asgi(api_key.plaintext)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert_nothing_kept(upstream_tenant)
    assert AuditEvent.objects.get(action="secret.failed").details["upstream_status"] == 500


@pytest.mark.postgres
def test_100_concurrent_duplicates_make_one_upstream_call_and_one_debit(
    upstream_tenant, api_key, emulator, settings
):
    settings.ISSUANCE_DB_THREADS = 8
    shutdown_db_threads()
    emulator.faults.slow(0.5)  # keep the first request in flight while the duplicates arrive
    responses = post_via_asgi(api_key.plaintext, 100, **{"Idempotency-Key": "order-77"})
    assert {r.status_code for r in responses} <= {200, 409}
    assert len([r for r in emulator.requests if r.path.endswith("/client_secrets")]) == 1
    assert ClientSecret.objects.count() == 1
    assert quota_used(tenant=upstream_tenant, metric=Metric.SECRETS) == 1
    successes = {r.content for r in responses if r.status_code == 200}
    assert len(successes) <= 1
    [late] = post_via_asgi(api_key.plaintext, 1, **{"Idempotency-Key": "order-77"})
    assert late.status_code == 200
    assert successes <= {late.content}
    assert len(emulator.requests) == 1
