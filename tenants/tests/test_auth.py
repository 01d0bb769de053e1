"""Every way an API key can fail, through a real endpoint, in OpenAI's error shape."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.actors import Actor
from conftest import make_key
from tenants import keys
from tenants.models import ApiKey, Scope, Tenant
from tenants.services import api_key_revoke, tenant_set_status

URL = "/api/v1/api_keys"


def get(client, token=None, header=None):
    headers = {}
    if header is not None:
        headers["HTTP_AUTHORIZATION"] = header
    elif token is not None:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.get(URL, **headers)


def assert_error(response, status, code, error_type="invalid_request_error"):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.django_db
def test_missing_key_is_401_with_bearer_challenge(api_client):
    response = get(api_client)
    assert_error(response, 401, "missing_api_key")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_non_bearer_header_is_401(api_client, api_key):
    assert_error(get(api_client, header=f"Basic {api_key.plaintext}"), 401, "invalid_api_key")
    assert_error(get(api_client, header="Bearer"), 401, "invalid_api_key")


@pytest.mark.django_db
def test_malformed_key_is_rejected_before_any_database_query(api_client, django_assert_num_queries):
    plaintext = keys.generate(keys.KeyType.API_KEY).plaintext
    typo = plaintext[:-1] + ("1" if plaintext.endswith("0") else "0")  # never the key itself
    with django_assert_num_queries(0):
        response = get(api_client, token="not-a-key")
    assert_error(response, 401, "invalid_api_key")
    with django_assert_num_queries(0):
        response = get(api_client, token=typo)
    assert_error(response, 401, "invalid_api_key")


@pytest.mark.django_db
def test_well_formed_unknown_key_is_401(api_client, api_key):
    unknown = keys.generate(keys.KeyType.API_KEY).plaintext
    assert_error(get(api_client, token=unknown), 401, "invalid_api_key")


@pytest.mark.django_db
def test_key_with_known_prefix_but_wrong_secret_is_401(api_client, api_key):
    # same lookup prefix, different tail (with a valid checksum): must fail the fingerprint check
    body = api_key.plaintext[: 7 + 8] + "Z" * 24
    body_key = f"{body}_{keys._checksum(body)}"
    assert keys.parse(body_key) is not None
    assert_error(get(api_client, token=body_key), 401, "invalid_api_key")


@pytest.mark.django_db
def test_revoked_key_is_401(api_client, api_key):
    api_key_revoke(api_key=api_key.api_key, actor=Actor.system("tests"))
    error = assert_error(get(api_client, token=api_key.plaintext), 401, "api_key_revoked")
    assert api_key.plaintext not in error["message"]


@pytest.mark.django_db
def test_expired_key_is_401(api_client, api_key):
    ApiKey.objects.filter(pk=api_key.api_key.pk).update(
        expires_at=timezone.now() - timezone.timedelta(seconds=1)
    )
    assert_error(get(api_client, token=api_key.plaintext), 401, "api_key_expired")


@pytest.mark.django_db
def test_relay_token_is_refused_on_rest(api_client):
    token = keys.generate(keys.KeyType.RELAY_TOKEN).plaintext
    error = assert_error(get(api_client, token=token), 401, "invalid_api_key")
    assert "WebSocket" in error["message"]


@pytest.mark.django_db
def test_suspended_tenant_is_403(api_client, api_key, tenant):
    tenant_set_status(tenant=tenant, status=Tenant.Status.SUSPENDED, actor=Actor.system("tests"))
    assert_error(get(api_client, token=api_key.plaintext), 403, "tenant_suspended")


@pytest.mark.django_db
def test_missing_scope_is_403(api_client, tenant):
    issued = make_key(tenant, scopes=[Scope.SECRETS_CREATE])
    error = assert_error(get(api_client, token=issued.plaintext), 403, "insufficient_scope")
    assert "manage:read" in error["message"]


@pytest.mark.django_db
def test_valid_key_lists_keys_and_records_last_use_at_most_once_a_minute(
    api_client, api_key, django_assert_num_queries
):
    assert api_key.api_key.last_used_at is None
    response = get(api_client, token=api_key.plaintext)
    assert response.status_code == 200
    api_key.api_key.refresh_from_db()
    first_use = api_key.api_key.last_used_at
    assert first_use is not None
    # a second request within the minute: key lookup + list query, and no write
    with django_assert_num_queries(2):
        assert get(api_client, token=api_key.plaintext).status_code == 200
    api_key.api_key.refresh_from_db()
    assert api_key.api_key.last_used_at == first_use


@pytest.mark.django_db
def test_last_use_is_refreshed_after_the_resolution_window(api_client, api_key):
    stale = timezone.now() - timezone.timedelta(minutes=5)
    ApiKey.objects.filter(pk=api_key.api_key.pk).update(last_used_at=stale)
    get(api_client, token=api_key.plaintext)
    api_key.api_key.refresh_from_db()
    assert api_key.api_key.last_used_at > stale
