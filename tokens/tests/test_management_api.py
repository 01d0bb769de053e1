"""The tenant management API for client secrets: /api/v1/client_secrets…"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import AuditEvent
from conftest import make_key
from tenants.models import Scope
from tokens.models import ClientSecret
from tokens.tests.conftest import issue
from usage.models import Metric
from usage.services import quota_reserve

pytestmark = pytest.mark.django_db


def client_for(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def mint(client: APIClient, **session) -> str:
    response = issue(client, {"session": {"type": "realtime", **session}})
    assert response.status_code == 200, response.content
    return str(response.json()["session"]["id"])


@pytest.fixture
def other_client(other_tenant_key):
    return client_for(other_tenant_key.plaintext)


def test_list_is_newest_first_with_cursor_pagination(key_client):
    ids = [mint(key_client) for _ in range(5)]
    page1 = key_client.get("/api/v1/client_secrets", {"limit": 2}).json()
    assert page1["object"] == "list"
    assert [s["id"] for s in page1["data"]] == ids[::-1][:2]
    assert (page1["first_id"], page1["last_id"], page1["has_more"]) == (ids[4], ids[3], True)
    page2 = key_client.get("/api/v1/client_secrets", {"limit": 2, "after": page1["last_id"]}).json()
    assert [s["id"] for s in page2["data"]] == [ids[2], ids[1]]
    page3 = key_client.get("/api/v1/client_secrets", {"limit": 2, "after": page2["last_id"]}).json()
    assert [s["id"] for s in page3["data"]] == [ids[0]]
    assert page3["has_more"] is False


def test_pagination_is_stable_when_secrets_share_a_timestamp(key_client, tenant):
    ids = [mint(key_client) for _ in range(4)]
    ClientSecret.objects.filter(tenant=tenant).update(created_at=datetime(2026, 1, 1, tzinfo=UTC))
    seen, after = [], None
    while True:
        params = {"limit": 1, **({"after": after} if after else {})}
        page = key_client.get("/api/v1/client_secrets", params).json()
        seen += [s["id"] for s in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 4


def test_list_filters(key_client, tenant, api_key):
    kiosk = make_key(tenant, name="kiosk")
    mint(key_client, model="gpt-realtime")
    kiosk_id = mint(client_for(kiosk.plaintext), model="gpt-realtime-mini")
    revoked = mint(key_client)
    key_client.post(f"/api/v1/client_secrets/{revoked}/revoke")

    def listed(**params):
        response = key_client.get("/api/v1/client_secrets", params)
        assert response.status_code == 200, response.content
        return {s["id"] for s in response.json()["data"]}

    assert listed(api_key=kiosk.api_key.pk) == {kiosk_id}
    assert listed(model="gpt-realtime-mini") == {kiosk_id}
    assert listed(status="revoked") == {revoked}
    assert len(listed(status="active")) == 2
    assert len(listed(kind="relay")) == 3
    assert listed(kind="upstream") == set()
    assert listed(created_after=(timezone.now() + timedelta(minutes=1)).isoformat()) == set()
    assert len(listed(created_before=(timezone.now() + timedelta(minutes=1)).isoformat())) == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"status": "gone"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"api_key": "x"}, "api_key"),
    ],
)
def test_bad_filters_are_400_naming_the_param(key_client, params, param):
    response = key_client.get("/api/v1/client_secrets", params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_the_list_never_shows_another_tenants_secrets_nor_accepts_their_cursor(key_client, other_client):
    mine = mint(key_client)
    theirs = mint(other_client)
    assert [s["id"] for s in key_client.get("/api/v1/client_secrets").json()["data"]] == [mine]
    response = key_client.get("/api/v1/client_secrets", {"after": theirs})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"


def test_the_list_costs_a_fixed_number_of_queries(key_client, django_assert_max_num_queries):
    for _ in range(13):
        mint(key_client)
    # key lookup, page (api keys joined in): no query per row
    with django_assert_max_num_queries(3):
        assert len(key_client.get("/api/v1/client_secrets").json()["data"]) == 13


def test_retrieve_shows_the_record_but_never_the_secret(key_client, api_key):
    response = issue(key_client, {"session": {"type": "realtime", "instructions": "Hi"}})
    value, secret_id = response.json()["value"], response.json()["session"]["id"]
    detail = key_client.get(f"/api/v1/client_secrets/{secret_id}")
    assert detail.status_code == 200
    data = detail.json()
    assert data["object"] == "client_secret"
    assert (data["id"], data["kind"], data["status"], data["last_four"]) == (
        secret_id,
        "relay",
        "active",
        value[-4:],
    )
    assert data["session"]["instructions"] == "Hi"
    assert data["api_key_id"] == api_key.api_key.pk
    assert data["api_key_prefix"] == api_key.api_key.prefix
    assert value not in detail.content.decode()
    assert "fingerprint" not in data


def test_a_secret_past_its_expiry_reads_as_expired_before_the_sweep_runs(key_client):
    secret_id = mint(key_client)
    ClientSecret.objects.filter(pk=secret_id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert key_client.get(f"/api/v1/client_secrets/{secret_id}").json()["status"] == "expired"
    assert {s["status"] for s in key_client.get("/api/v1/client_secrets").json()["data"]} == {"expired"}


def test_another_tenants_or_an_unknown_secret_is_404(key_client, other_client):
    theirs = mint(other_client)
    for secret_id in (theirs, "cs_" + "A" * 21):
        response = key_client.get(f"/api/v1/client_secrets/{secret_id}")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert key_client.get("/api/v1/client_secrets/not-an-id").status_code == 404


def test_revoke_is_idempotent_and_audited_once(key_client, api_key):
    secret_id = mint(key_client)
    first = key_client.post(f"/api/v1/client_secrets/{secret_id}/revoke")
    assert first.status_code == 200
    assert first.json()["status"] == "revoked"
    assert first.json()["revoked_at"] is not None
    again = key_client.post(f"/api/v1/client_secrets/{secret_id}/revoke")
    assert again.status_code == 200
    assert again.json()["revoked_at"] == first.json()["revoked_at"]
    event = AuditEvent.objects.get(action="secret.revoked")
    assert event.target_id == secret_id
    assert event.actor_label == api_key.api_key.prefix
    assert event.details["status_before"] == "active"
    secret = ClientSecret.objects.get(pk=secret_id)
    assert secret.status == ClientSecret.Status.REVOKED


def test_a_used_relay_token_can_still_be_revoked(key_client):
    secret_id = mint(key_client)
    ClientSecret.objects.filter(pk=secret_id).update(status=ClientSecret.Status.USED)
    assert key_client.post(f"/api/v1/client_secrets/{secret_id}/revoke").json()["status"] == "revoked"


def test_another_tenants_key_cannot_revoke_a_secret(key_client, other_client):
    secret_id = mint(key_client)
    response = other_client.post(f"/api/v1/client_secrets/{secret_id}/revoke")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert ClientSecret.objects.get(pk=secret_id).status == ClientSecret.Status.ACTIVE
    assert not AuditEvent.objects.filter(action="secret.revoked").exists()


def test_scopes_guard_the_management_api(tenant, key_client):
    secret_id = mint(key_client)
    reader = client_for(make_key(tenant, name="reader", scopes=[Scope.MANAGE_READ]).plaintext)
    issuer = client_for(make_key(tenant, name="issuer", scopes=[Scope.SECRETS_CREATE]).plaintext)
    assert reader.get("/api/v1/client_secrets").status_code == 200
    assert (
        reader.post(f"/api/v1/client_secrets/{secret_id}/revoke").json()["error"]["code"]
        == "insufficient_scope"
    )
    assert issuer.get("/api/v1/client_secrets").status_code == 403
    assert issuer.get("/api/v1/client_secrets/usage").status_code == 403
    assert ClientSecret.objects.get(pk=secret_id).status == ClientSecret.Status.ACTIVE


def test_usage_summary_counts_this_tenants_issuance(key_client, other_client, tenant):
    from tokens.tests.conftest import set_limits

    set_limits(tenant, secrets_per_day=50)
    for _ in range(3):
        mint(key_client)
    mint(other_client)
    yesterday = mint(key_client)
    ClientSecret.objects.filter(pk=yesterday).update(created_at=timezone.now() - timedelta(days=1))
    quota_reserve(tenant=tenant, metric=Metric.SECRETS)  # e.g. an upstream call in flight
    response = key_client.get("/api/v1/client_secrets/usage", {"days": 3})
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "client_secret.usage"
    assert data["today"] == {"reserved": 5, "limit": 50, "remaining": 45}
    assert [day["issued"] for day in data["days"]] == [0, 1, 3]
    assert data["days"][-1] == {
        "date": timezone.now().date().isoformat(),
        "issued": 3,
        "relay": 3,
        "upstream": 0,
    }
    assert data["by_status"]["active"] == 4
    assert key_client.get("/api/v1/client_secrets/usage", {"days": 0}).status_code == 400
