"""POST /v1/realtime/client_secrets through the DRF view (Django's test client): relay kind."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from openai.types.realtime import ClientSecretCreateResponse
from rest_framework.test import APIClient

from audit.models import AuditEvent
from conftest import make_key
from tenants import keys
from tenants.models import Scope, Tenant
from tokens.idempotency import idempotency_claim, request_fingerprint
from tokens.models import ClientSecret, IdempotencyRecord
from tokens.tests.conftest import issue, set_limits, set_policy
from usage.models import Metric, UsageEvent
from usage.services import quota_used

pytestmark = pytest.mark.django_db

BODY = {
    "expires_after": {"anchor": "created_at", "seconds": 120},
    "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
}


def client_for(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def test_a_relay_secret_is_issued_in_openai_shape_and_recorded_without_its_value(key_client, api_key, tenant):
    before = int(time.time())
    response = issue(key_client, BODY, REMOTE_ADDR="203.0.113.9", HTTP_X_REQUEST_ID="trace-42")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"value", "expires_at", "session"}
    parsed = ClientSecretCreateResponse.model_validate(body)  # what the official SDK builds from it
    assert parsed.session.type == "realtime"
    token = body["value"]
    assert keys.parse(token).key_type is keys.KeyType.RELAY_TOKEN
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120

    secret = ClientSecret.objects.get()
    assert secret.pk == body["session"]["id"]
    assert secret.kind == ClientSecret.Kind.RELAY
    assert secret.fingerprint == keys.fingerprint(token)
    assert secret.last_four == token[-4:]
    assert secret.lookup_prefix == token[:15]
    assert secret.status == ClientSecret.Status.ACTIVE
    assert secret.single_use is True
    assert secret.max_session_seconds == 1800
    assert secret.api_key_id == api_key.api_key.pk
    assert secret.model == "gpt-realtime"
    assert secret.session_config == {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
    assert int(secret.expires_at.timestamp()) == body["expires_at"]
    assert secret.request_id == "trace-42"

    event = AuditEvent.objects.get(action="secret.issued")
    assert event.target_id == secret.pk
    assert event.actor_type == "api_key"
    assert event.actor_label == api_key.api_key.prefix
    assert event.ip == "203.0.113.9"
    assert event.request_id == "trace-42"
    assert event.details["kind"] == "relay"
    assert event.details["key_prefix"] == api_key.api_key.prefix

    usage = UsageEvent.objects.get()
    assert (usage.kind, usage.natural_key, usage.client_secret_id) == (
        "secret_issued",
        f"secret:{secret.pk}",
        secret.pk,
    )
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 1
    assert response["x-ratelimit-limit-requests"] == "600"
    assert response["x-ratelimit-remaining-requests"] == "599"

    stored = json.dumps(
        [
            list(ClientSecret.objects.values()),
            list(AuditEvent.objects.values("details")),
            list(UsageEvent.objects.values()),
        ],
        default=str,
    )
    assert token not in stored
    assert token[7:-7] not in stored


def test_an_empty_body_gets_a_realtime_session_with_the_policy_defaults(key_client):
    response = issue(key_client)
    assert response.status_code == 200
    body = response.json()
    assert body["session"]["model"] == "gpt-realtime"
    assert body["expires_at"] - int(time.time()) in range(55, 61)  # the policy's 60 s default


def test_a_transcription_session_can_be_issued(key_client):
    response = issue(
        key_client,
        {"session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}},
    )
    assert response.status_code == 200
    session = ClientSecretCreateResponse.model_validate(response.json()).session
    assert session.type == "transcription"
    assert ClientSecret.objects.get().model == ""


@pytest.mark.parametrize(
    ("header", "status", "code"),
    [
        (None, 401, "missing_api_key"),
        ("Basic abc", 401, "invalid_api_key"),
        ("Bearer rtp_sk_notakey", 401, "invalid_api_key"),
        ("Bearer sk-proj-abcdefghijklmnopqrstuvwxyz", 401, "invalid_api_key"),
    ],
)
def test_bad_credentials_are_401(api_client, header, status, code):
    if header:
        api_client.credentials(HTTP_AUTHORIZATION=header)
    response = issue(api_client, BODY)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert not ClientSecret.objects.exists()


def test_a_key_without_the_scope_is_403(read_only_key):
    response = issue(client_for(read_only_key.plaintext), BODY)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_a_suspended_tenant_cannot_issue(key_client, tenant):
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    response = issue(key_client, BODY)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"


def test_a_relay_token_is_not_accepted_as_an_api_key(key_client, api_client):
    token = issue(key_client, BODY).json()["value"]
    response = issue(client_for(token), BODY)
    assert response.status_code == 401
    assert "WebSocket" in response.json()["error"]["message"]


def test_an_invalid_body_is_a_400_naming_the_param_and_takes_no_quota(key_client, tenant):
    response = issue(key_client, {"session": {"type": "realtime", "voice": "alloy"}})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Unknown parameter: 'session.voice'.",
        "type": "invalid_request_error",
        "param": "session.voice",
        "code": "unknown_parameter",
    }
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 0
    assert not ClientSecret.objects.exists()
    assert response["x-ratelimit-remaining-requests"] == "599"  # invalid requests count too


def test_malformed_json_is_400_invalid_json(key_client):
    response = issue(key_client, b'{"session": {')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_a_body_over_the_cap_is_413(key_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = issue(key_client, {"session": {"type": "realtime", "instructions": "x" * 4000}})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_policy_refusal_is_a_400_audited_as_failed_with_nothing_reserved(key_client, tenant):
    set_policy(tenant, allowed_models=["gpt-realtime-mini"])
    response = issue(key_client, BODY)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert response.json()["error"]["param"] == "session.model"
    failed = AuditEvent.objects.get(action="secret.failed")
    assert failed.details["reason"] == "policy"
    assert failed.details["code"] == "model_not_allowed"
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 0


def test_the_effective_session_carries_the_policy(key_client, tenant):
    set_policy(
        tenant,
        allowed_voices=["cedar"],
        instructions_prefix="Stay on topic.",
        max_output_tokens_ceiling=300,
        ttl_max_seconds=90,
        relay_single_use=False,
        max_session_seconds=600,
    )
    response = issue(key_client, BODY)  # asks for 120 s: clamped to 90
    assert response.status_code == 200
    session = response.json()["session"]
    assert session["instructions"] == "Stay on topic.\n\nBe brief."
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["max_output_tokens"] == 300
    assert response.json()["expires_at"] - int(time.time()) in range(85, 91)
    secret = ClientSecret.objects.get()
    assert secret.session_config["max_output_tokens"] == 300
    assert (secret.single_use, secret.max_session_seconds) == (False, 600)
    assert set(AuditEvent.objects.get(action="secret.issued").details["policy_adjustments"]) == {
        "voice_defaulted",
        "instructions_prefixed",
        "max_output_tokens_capped",
        "ttl_clamped",
    }


def test_reject_mode_refuses_an_out_of_bounds_ttl(key_client, tenant):
    set_policy(tenant, ttl_mode="reject", ttl_max_seconds=60)
    response = issue(key_client, BODY)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "expires_after.seconds"


def test_the_key_can_choose_the_relay_kind_over_the_tenant_policy(tenant):
    set_policy(tenant, secret_kind="upstream")
    relay_key = make_key(tenant, name="kiosk")
    relay_key.api_key.secret_kind = "relay"
    relay_key.api_key.save()
    response = issue(client_for(relay_key.plaintext), BODY)
    assert response.status_code == 200
    assert response.json()["value"].startswith("rtp_rt_")


# --- Quotas -----------------------------------------------------------------------------------


def test_the_daily_quota_is_exact_and_a_refusal_is_not_retryable(key_client, tenant):
    set_limits(tenant, secrets_per_day=2)
    assert [issue(key_client, BODY).status_code for _ in range(2)] == [200, 200]
    refused = issue(key_client, BODY)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert refused["x-should-retry"] == "false"  # the official SDK would otherwise retry a 429
    assert ClientSecret.objects.count() == 2
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 2
    failed = AuditEvent.objects.get(action="secret.failed")
    assert failed.details["reason"] == "quota"


def test_a_keys_sub_limit_applies_to_that_key_only(tenant, api_key):
    kiosk = make_key(tenant, name="kiosk", secrets_per_day=1)
    assert issue(client_for(kiosk.plaintext), BODY).status_code == 200
    refused = issue(client_for(kiosk.plaintext), BODY)
    assert refused.status_code == 429
    assert "this API key" in refused.json()["error"]["message"]
    assert issue(client_for(api_key.plaintext), BODY).status_code == 200


# --- Rate limits ------------------------------------------------------------------------------


def test_the_tenant_rate_limit_answers_429_in_openai_shape_with_headers(key_client, tenant):
    set_limits(tenant, requests_per_minute=3)
    remaining = [issue(key_client, BODY)["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    limited = issue(key_client, BODY)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert limited["x-ratelimit-limit-requests"] == "3"
    assert limited["x-ratelimit-remaining-requests"] == "0"
    assert limited["x-ratelimit-reset-requests"].endswith("s")
    assert ClientSecret.objects.count() == 3
    assert not AuditEvent.objects.filter(action="secret.failed").exists()  # not audited: floods


def test_the_per_key_rate_limit_leaves_other_keys_alone(settings, tenant, api_key):
    settings.RATE_LIMIT_PER_KEY_PER_MINUTE = 2
    busy = client_for(api_key.plaintext)
    assert [issue(busy, BODY).status_code for _ in range(3)] == [200, 200, 429]
    assert "API key" in issue(busy, BODY).json()["error"]["message"]
    other = make_key(tenant, name="other", scopes=[Scope.SECRETS_CREATE])
    assert issue(client_for(other.plaintext), BODY).status_code == 200


def test_with_the_rate_limit_store_down_issuance_fails_closed_fast(settings, key_client, tenant):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens on the discard port
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    first = issue(key_client, BODY)
    assert first.status_code == 503
    assert first.json()["error"]["code"] == "rate_limiter_unavailable"
    assert first.json()["error"]["type"] == "server_error"
    assert int(first["Retry-After"]) >= 1
    # The breaker is open: the next request is refused without trying the store at all, even
    # though a working store is configured now.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert issue(key_client, BODY).status_code == 503
    assert not ClientSecret.objects.exists()
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 0
    from tokens.ratelimit import breaker_reset

    breaker_reset()  # what the passing of RATE_LIMIT_BREAKER_SECONDS does
    assert issue(key_client, BODY).status_code == 200


# --- Idempotency ------------------------------------------------------------------------------


def test_a_repeated_idempotency_key_replays_the_first_response_byte_for_byte(key_client, tenant):
    first = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-1")
    again = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-1")
    reordered = issue(
        key_client,
        b'{"session": {"instructions": "Be brief.", "model": "gpt-realtime", "type": "realtime"},'
        b' "expires_after": {"seconds": 120, "anchor": "created_at"}}',
        HTTP_IDEMPOTENCY_KEY="order-1",
    )
    assert first.status_code == again.status_code == reordered.status_code == 200
    assert again.content == first.content == reordered.content
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert ClientSecret.objects.count() == 1
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 1
    assert AuditEvent.objects.filter(action="secret.issued").count() == 1
    record = IdempotencyRecord.objects.get()
    assert first.json()["value"] not in record.response_encrypted  # stored encrypted


def test_the_same_idempotency_key_with_another_body_is_422(key_client):
    issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-2")
    response = issue(key_client, {**BODY, "expires_after": {"seconds": 300}}, HTTP_IDEMPOTENCY_KEY="order-2")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert ClientSecret.objects.count() == 1


def test_a_duplicate_while_the_first_is_in_flight_is_409(key_client, api_key):
    claim = idempotency_claim(
        api_key=api_key.api_key,
        key="order-3",
        request_hash=request_fingerprint("POST", "/v1/realtime/client_secrets", BODY),
    )
    assert claim is not None
    response = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-3")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_request_in_progress"
    assert response["Retry-After"] == "1"
    assert not ClientSecret.objects.exists()


def test_a_stale_in_flight_claim_is_taken_over(key_client, api_key):
    idempotency_claim(
        api_key=api_key.api_key,
        key="order-4",
        request_hash=request_fingerprint("POST", "/v1/realtime/client_secrets", BODY),
    )
    IdempotencyRecord.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    assert issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-4").status_code == 200
    assert IdempotencyRecord.objects.get().state == IdempotencyRecord.State.COMPLETED


def test_a_failed_request_releases_its_idempotency_key(key_client, tenant):
    set_limits(tenant, secrets_per_day=0)
    assert issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-5").status_code == 429
    set_limits(tenant, secrets_per_day=5)
    retried = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-5")
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried


def test_keys_expire_after_24_hours_and_are_scoped_per_api_key(key_client, tenant):
    first = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-6")
    other = make_key(tenant, name="other")
    elsewhere = issue(client_for(other.plaintext), BODY, HTTP_IDEMPOTENCY_KEY="order-6")
    assert elsewhere.status_code == 200
    assert elsewhere.content != first.content
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    later = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="order-6")
    assert later.status_code == 200
    assert later.content != first.content
    assert ClientSecret.objects.count() == 3


def test_an_unusable_idempotency_key_is_400(key_client):
    response = issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="x" * 256)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


def test_the_purge_deletes_only_records_past_their_24_hours(key_client):
    from tokens.idempotency import idempotency_purge

    issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="old")
    issue(key_client, BODY, HTTP_IDEMPOTENCY_KEY="new")
    IdempotencyRecord.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert idempotency_purge() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]
    assert ClientSecret.objects.count() == 2  # the secrets themselves stay
