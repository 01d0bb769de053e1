"""A key or user of one tenant never sees or changes another tenant's objects: 404, not 403."""

from __future__ import annotations

import pytest

from realtime_platform.errors import NotFound
from tenants.access import access_api_key, access_member, access_membership
from tenants.models import Membership


@pytest.mark.django_db
def test_list_shows_only_own_tenants_keys(key_client, api_key, other_tenant_key):
    response = key_client.get("/api/v1/api_keys")
    assert response.status_code == 200
    prefixes = {item["prefix"] for item in response.json()["data"]}
    assert api_key.api_key.prefix in prefixes
    assert other_tenant_key.api_key.prefix not in prefixes


@pytest.mark.django_db
def test_other_tenants_key_id_is_404_like_a_missing_one(key_client, other_tenant_key):
    foreign = key_client.get(f"/api/v1/api_keys/{other_tenant_key.api_key.pk}")
    missing = key_client.get("/api/v1/api_keys/999999")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


@pytest.mark.django_db
def test_other_tenants_key_cannot_be_revoked(key_client, other_tenant_key):
    response = key_client.post(f"/api/v1/api_keys/{other_tenant_key.api_key.pk}/revoke")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    other_tenant_key.api_key.refresh_from_db()
    assert other_tenant_key.api_key.revoked_at is None


@pytest.mark.django_db
def test_own_key_can_be_revoked_and_revoking_twice_is_harmless(key_client, tenant):
    from conftest import make_key

    victim = make_key(tenant, name="victim")
    first = key_client.post(f"/api/v1/api_keys/{victim.api_key.pk}/revoke")
    second = key_client.post(f"/api/v1/api_keys/{victim.api_key.pk}/revoke")
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == "revoked"
    assert first.json()["revoked_at"] == second.json()["revoked_at"]


@pytest.mark.django_db
def test_tenant_endpoint_describes_only_the_keys_tenant(key_client, tenant):
    body = key_client.get("/api/v1/tenant").json()
    assert body["slug"] == tenant.slug
    assert body["limits"]["secrets_per_day"] == tenant.plan.secrets_per_day


@pytest.mark.django_db
def test_console_access_guards_hide_other_tenants(
    owner, outsider, viewer, tenant, other_tenant, other_tenant_key, api_key
):
    # owner of A reaches A's key but not B's
    assert access_api_key(user=owner, tenant_id=tenant.pk, key_id=api_key.api_key.pk, manage=True)
    with pytest.raises(NotFound):
        access_api_key(user=owner, tenant_id=tenant.pk, key_id=other_tenant_key.api_key.pk)
    with pytest.raises(NotFound):
        access_api_key(user=owner, tenant_id=other_tenant.pk, key_id=other_tenant_key.api_key.pk)
    # bob (owner of B) cannot reach A at all
    with pytest.raises(NotFound):
        access_membership(user=outsider, tenant_id=tenant.pk)
    with pytest.raises(NotFound):
        access_api_key(user=outsider, tenant_id=tenant.pk, key_id=api_key.api_key.pk)
    # a viewer may read but not manage
    assert access_api_key(user=viewer, tenant_id=tenant.pk, key_id=api_key.api_key.pk)
    with pytest.raises(NotFound):
        access_api_key(user=viewer, tenant_id=tenant.pk, key_id=api_key.api_key.pk, manage=True)
    bob_membership = Membership.objects.get(user=outsider)
    with pytest.raises(NotFound):
        access_member(user=owner, tenant_id=tenant.pk, membership_id=bob_membership.pk)
