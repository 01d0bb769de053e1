"""End to end: the unmodified official `openai` SDK against the platform served by daphne (the
issuance fast path, the emulator standing in for OpenAI), including every exception class."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from openai import OpenAI
from openai.types.realtime import RealtimeSessionCreateResponse, RealtimeTranscriptionSessionCreateResponse

from tenants.models import Scope
from tokens.idempotency import idempotency_claim, request_fingerprint
from tokens.models import ClientSecret
from tokens.tests.conftest import set_limits, set_policy

pytestmark = pytest.mark.django_db(transaction=True)

SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}


def sdk(server, key: str, **options) -> OpenAI:
    return OpenAI(base_url=f"{server.http_url}/v1", api_key=key, max_retries=0, timeout=20, **options)


def test_the_sdk_issues_a_relay_secret(live_server_asgi, api_key):
    secret = sdk(live_server_asgi, api_key.plaintext).realtime.client_secrets.create(
        session=SESSION, expires_after={"anchor": "created_at", "seconds": 60}
    )
    assert secret.value.startswith("rtp_rt_")
    assert isinstance(secret.session, RealtimeSessionCreateResponse)
    assert secret.session.model == "gpt-realtime"
    assert ClientSecret.objects.get().pk == secret.session.id


def test_the_sdk_issues_a_transcription_secret(live_server_asgi, api_key):
    secret = sdk(live_server_asgi, api_key.plaintext).realtime.client_secrets.create(
        session={"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    )
    assert isinstance(secret.session, RealtimeTranscriptionSessionCreateResponse)


def test_the_sdk_issues_an_upstream_secret_through_the_platform(live_server_asgi, emulator, api_key, tenant):
    set_policy(tenant, secret_kind="upstream")
    client = sdk(live_server_asgi, api_key.plaintext)
    secret = client.realtime.client_secrets.create(session=SESSION)
    assert secret.value.startswith("ek_")
    assert secret.session.id.startswith("sess_")
    assert len(emulator.requests) == 1
    # the ek_ works at "OpenAI" directly: the SDK pointed at the emulator accepts it as a key
    direct = OpenAI(base_url=emulator.base_url, api_key=emulator.api_key, max_retries=0)
    assert direct.realtime.client_secrets.create(session=SESSION).value.startswith("ek_")


def test_idempotency_key_through_the_sdk(live_server_asgi, api_key):
    client = sdk(live_server_asgi, api_key.plaintext)
    first = client.realtime.client_secrets.with_raw_response.create(
        session=SESSION, extra_headers={"Idempotency-Key": "sdk-1"}
    )
    again = client.realtime.client_secrets.with_raw_response.create(
        session=SESSION, extra_headers={"Idempotency-Key": "sdk-1"}
    )
    assert again.http_response.content == first.http_response.content
    assert again.headers["idempotent-replayed"] == "true"
    assert ClientSecret.objects.count() == 1


def test_each_error_becomes_the_sdks_usual_exception(
    live_server_asgi, emulator, api_key, tenant, make_key_for
):
    client = sdk(live_server_asgi, api_key.plaintext)
    create = client.realtime.client_secrets.create

    with pytest.raises(openai.BadRequestError) as bad:
        create(session=SESSION, expires_after={"anchor": "created_at", "seconds": 5})
    assert bad.value.param == "expires_after.seconds"
    assert bad.value.code == "integer_below_min_value"

    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        sdk(live_server_asgi, "rtp_sk_wrong").realtime.client_secrets.create(session=SESSION)
    assert unauthenticated.value.code == "invalid_api_key"

    reader = make_key_for(tenant, scopes=[Scope.MANAGE_READ])
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        sdk(live_server_asgi, reader).realtime.client_secrets.create(session=SESSION)
    assert forbidden.value.code == "insufficient_scope"

    with pytest.raises(openai.NotFoundError):
        client.get("/realtime/no_such_endpoint", cast_to=object)

    idempotency_claim(
        api_key=api_key.api_key,
        key="busy",
        request_hash=request_fingerprint("POST", "/v1/realtime/client_secrets", {"session": SESSION}),
    )
    with pytest.raises(openai.ConflictError) as conflict:
        create(session=SESSION, extra_headers={"Idempotency-Key": "busy"})
    assert conflict.value.code == "idempotency_request_in_progress"

    create(session=SESSION, extra_headers={"Idempotency-Key": "once"})
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        create(session={**SESSION, "instructions": "Other."}, extra_headers={"Idempotency-Key": "once"})
    assert reused.value.code == "idempotency_key_reused"

    set_limits(tenant, secrets_per_day=1)
    with pytest.raises(openai.RateLimitError) as limited:
        create(session=SESSION)
    assert limited.value.type == "insufficient_quota"

    set_limits(tenant, secrets_per_day=100)
    set_policy(tenant, secret_kind="upstream")
    emulator.faults.next_http(500, times=3)
    with pytest.raises(openai.InternalServerError) as failed:
        create(session=SESSION)
    assert failed.value.status_code == 502
    assert failed.value.code == "upstream_error"


def test_the_sdk_retries_a_conflict_until_the_first_request_is_done(
    live_server_asgi, emulator, api_key, tenant
):
    """The SDK retries 409s by itself; once the first request completes it gets the same secret."""
    set_policy(tenant, secret_kind="upstream")
    emulator.faults.slow(1.0)
    results = {}

    def first() -> None:
        results["first"] = sdk(live_server_asgi, api_key.plaintext).realtime.client_secrets.create(
            session=SESSION, extra_headers={"Idempotency-Key": "retry-me"}
        )

    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.3)
    second = OpenAI(base_url=f"{live_server_asgi.http_url}/v1", api_key=api_key.plaintext, max_retries=5)
    results["second"] = second.realtime.client_secrets.create(
        session=SESSION, extra_headers={"Idempotency-Key": "retry-me"}
    )
    thread.join(10)
    assert results["second"].value == results["first"].value
    assert len(emulator.requests) == 1
