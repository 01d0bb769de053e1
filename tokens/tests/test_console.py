"""The console's client-secret pages through the test client: the list (filters, pages, the
status as of now), and revoking one (audited as the user, idempotent, back to the same page).
Who may open them is in tenants/tests/test_console_permissions.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from conftest import make_key
from tokens.models import ClientSecret
from tokens.tests.factories import ClientSecretFactory

pytestmark = pytest.mark.django_db


def url(tenant, name, *args):
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def signed_in(user) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(user)
    return client


def listed(response) -> list[str]:
    return [row["secret"].pk for row in response.context["rows"]]


def test_secrets_come_newest_first_fifty_a_page(compliance_user, tenant):
    start = timezone.now() - timedelta(hours=2)
    made = [ClientSecretFactory(tenant=tenant, created_at=start + timedelta(seconds=i)) for i in range(120)]
    newest_first = [secret.pk for secret in reversed(made)]
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "secrets"))
    assert listed(response) == newest_first[:50]
    seen = listed(response)
    while response.context["older_query"]:
        response = client.get(url(tenant, "secrets") + "?" + response.context["older_query"])
        seen += listed(response)
    assert seen == newest_first
    assert 'href="?"' in response.content.decode()  # back to the newest page


def test_filters_by_status_kind_key_and_model(compliance_user, tenant):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    relay = ClientSecretFactory(tenant=tenant, api_key=kiosk)
    upstream = ClientSecretFactory(
        tenant=tenant, api_key=backend, kind=ClientSecret.Kind.UPSTREAM, model="gpt-realtime-mini"
    )
    revoked = ClientSecretFactory(tenant=tenant, api_key=kiosk, status=ClientSecret.Status.REVOKED)
    # past its expiry, not yet swept: expired as far as anyone is concerned
    lapsed = ClientSecretFactory(
        tenant=tenant, api_key=backend, created_at=timezone.now() - timedelta(hours=1)
    )
    client = signed_in(compliance_user)

    def filtered(**params):
        response = client.get(url(tenant, "secrets"), params)
        assert response.status_code == 200
        return set(listed(response))

    assert filtered(status="active") == {relay.pk, upstream.pk}
    assert filtered(status="expired") == {lapsed.pk}
    assert filtered(status="revoked") == {revoked.pk}
    assert filtered(kind="upstream") == {upstream.pk}
    assert filtered(api_key=str(kiosk.pk)) == {relay.pk, revoked.pk}
    assert filtered(model="gpt-realtime-mini") == {upstream.pk}
    assert filtered(kind="relay", status="active", api_key=str(kiosk.pk)) == {relay.pk}
    body = client.get(url(tenant, "secrets")).content.decode()
    assert f'id="secret-{lapsed.pk}" class="status-expired"' in body


def test_a_time_range_is_typed_in_the_tenants_time_zone(compliance_user, tenant):
    tenant.time_zone = "Asia/Kolkata"  # UTC+5:30
    tenant.save()
    morning = ClientSecretFactory(tenant=tenant, created_at=datetime(2026, 5, 1, 3, 0, tzinfo=UTC))  # 08:30
    noon = ClientSecretFactory(tenant=tenant, created_at=datetime(2026, 5, 1, 6, 30, tzinfo=UTC))  # 12:00
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "secrets"), {"created_after": "2026-05-01T09:00"})
    assert listed(response) == [noon.pk]
    response = client.get(
        url(tenant, "secrets"), {"created_after": "2026-05-01T08:30", "created_before": "2026-05-01T12:00"}
    )
    assert listed(response) == [morning.pk]
    assert "2026-05-01 08:30:00" in response.content.decode()


def test_bad_filters_are_explained_and_list_nothing(compliance_user, tenant, other_tenant):
    ClientSecretFactory(tenant=tenant)
    client = signed_in(compliance_user)
    response = client.get(
        url(tenant, "secrets"), {"created_after": "2026-05-02T00:00", "created_before": "2026-05-01T00:00"}
    )
    assert response.context["page"] is None
    assert response.context["form"].errors == {"created_before": ["Must be later than “Issued from”."]}
    other_key = make_key(other_tenant, name="bob key").api_key
    response = client.get(url(tenant, "secrets"), {"api_key": str(other_key.pk), "status": "lost"})
    assert set(response.context["form"].errors) == {"api_key", "status"}  # not one of this tenant's keys
    assert response.context["page"] is None


def test_a_cursor_from_elsewhere_starts_again_from_the_newest_page(compliance_user, tenant, other_tenant):
    mine = ClientSecretFactory(tenant=tenant)
    theirs = ClientSecretFactory(tenant=other_tenant)
    response = signed_in(compliance_user).get(url(tenant, "secrets"), {"after": theirs.pk})
    assert listed(response) == [mine.pk]
    assert "That page link is not valid any more" in response.content.decode()


def test_only_managers_see_revoke_and_only_on_secrets_that_can_still_be_used(owner, compliance_user, tenant):
    active = ClientSecretFactory(tenant=tenant)
    used = ClientSecretFactory(tenant=tenant, status=ClientSecret.Status.USED)
    revoked = ClientSecretFactory(tenant=tenant, status=ClientSecret.Status.REVOKED)
    expired = ClientSecretFactory(tenant=tenant, status=ClientSecret.Status.EXPIRED)
    body = signed_in(owner).get(url(tenant, "secrets")).content.decode()
    for secret, offered in ((active, True), (used, True), (revoked, False), (expired, False)):
        assert (url(tenant, "secret-revoke", secret.pk) in body) is offered, secret.status
    assert "data-confirm=" in body
    body = signed_in(compliance_user).get(url(tenant, "secrets")).content.decode()
    assert "/revoke/" not in body
    assert f"?target_type=tokens.clientsecret&amp;target_id={active.pk}" in body  # its history


def test_revoking_a_relay_secret_is_audited_as_the_user_and_returns_to_the_same_page(owner, tenant):
    key = make_key(tenant, name="kiosk").api_key
    secret = ClientSecretFactory(tenant=tenant, api_key=key)
    client = signed_in(owner)
    response = client.post(
        url(tenant, "secret-revoke", secret.pk),
        {"return_query": f"status=active&api_key={key.pk}&after=cs_x&next=https://evil.example/&kind="},
    )
    assert response.status_code == 302
    assert response["Location"] == url(tenant, "secrets") + f"?status=active&api_key={key.pk}&after=cs_x"
    secret.refresh_from_db()
    assert secret.status == ClientSecret.Status.REVOKED
    assert secret.revoked_at is not None
    event = AuditEvent.objects.get(action="secret.revoked")
    assert (event.actor_type, event.actor_label, event.ip) == ("user", "alice", "203.0.113.9")
    assert (event.target_type, event.target_id) == ("tokens.clientsecret", secret.pk)
    page = client.get(url(tenant, "secrets"))
    assert (
        "is revoked: it can no longer open a session, and a live session it opened" in page.content.decode()
    )

    again = client.post(url(tenant, "secret-revoke", secret.pk))
    assert again["Location"] == url(tenant, "secrets")
    assert AuditEvent.objects.filter(action="secret.revoked").count() == 1
    assert "was already revoked" in client.get(url(tenant, "secrets")).content.decode()


def test_revoking_an_openai_key_says_openai_still_accepts_it_until_it_expires(admin_user, tenant):
    tenant.time_zone = "Europe/Berlin"
    tenant.save()
    secret = ClientSecretFactory(
        tenant=tenant, kind=ClientSecret.Kind.UPSTREAM, expires_at=datetime(2030, 7, 1, 10, 0, tzinfo=UTC)
    )
    client = signed_in(admin_user)
    client.post(url(tenant, "secret-revoke", secret.pk))
    body = client.get(url(tenant, "secrets")).content.decode()
    assert "stays usable at OpenAI until it expires (2030-07-01 12:00, Europe/Berlin)" in body
    secret.refresh_from_db()
    assert secret.status == ClientSecret.Status.REVOKED


def test_the_list_reads_a_fixed_number_of_queries(compliance_user, tenant, django_assert_max_num_queries):
    keys = [make_key(tenant, name=f"key {i}").api_key for i in range(3)]
    for i in range(60):
        ClientSecretFactory(tenant=tenant, api_key=keys[i % 3])
    client = signed_in(compliance_user)
    client.get(url(tenant, "secrets"))
    with django_assert_max_num_queries(7):
        client.get(url(tenant, "secrets"), {"status": "active"})
