"""Changes made in the Django admin go through the services, so they are validated and audited
like any other."""

from __future__ import annotations

from typing import Any

import pytest

from audit.actors import Actor
from audit.chain import PLATFORM_CHAIN
from audit.models import AuditEvent
from tenants.models import Membership, Role, SessionPolicy, Tenant
from tenants.services import (
    plan_get_or_create_default,
    upstream_credential_reencrypt_all,
    upstream_credential_set,
)
from tenants.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    user = UserFactory(username="ops", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def form_data(response: Any) -> dict[str, Any]:
    """The POST data an operator's browser would send back unchanged for an admin change form."""
    data: dict[str, Any] = {}

    def add(form: Any) -> None:
        for name in form.fields:
            value = form[name].value()  # already as the widget renders it
            if value is None or value is False:
                continue
            data[form.add_prefix(name)] = "on" if value is True else value

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
        for form in formset.forms:
            add(form)
    return data


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq"))


def test_policy_limits_and_members_changed_inline_are_validated_and_audited(
    client, operator, tenant, owner, viewer
):
    url = f"/admin/tenants/tenant/{tenant.pk}/change/"
    data = form_data(client.get(url))
    data["session_policy-0-ttl_max_seconds"] = "300"
    data["quota_override-0-secrets_per_day"] = "50"
    member = Membership.objects.get(user=viewer, tenant=tenant)
    index = next(i for i in range(10) if data.get(f"memberships-{i}-id") == member.pk)
    data[f"memberships-{index}-role"] = Role.COMPLIANCE
    response = client.post(url, data)
    assert response.status_code == 302, response.content[:2000]
    policy = events("policy.changed")[-1]
    assert policy.details["changes"]["ttl_max_seconds"] == {"before": 600, "after": 300}
    assert policy.actor_label == "ops"
    assert events("quota.changed")[-1].details["changes"]["secrets_per_day"] == {"before": None, "after": 50}
    assert events("member.role_changed")[-1].details["role"] == {"before": "viewer", "after": "compliance"}

    data = form_data(client.get(url))
    data["session_policy-0-ttl_max_seconds"] = "99999"  # above the plan's bound
    response = client.post(url, data, follow=True)
    assert b"Not saved: ttl_max_seconds cannot exceed" in response.content
    assert SessionPolicy.objects.get(tenant=tenant).ttl_max_seconds == 300


def test_members_added_and_removed_in_the_admin_are_audited_and_the_last_owner_stays(
    client, operator, tenant, owner
):
    newcomer = UserFactory(username="nina")
    response = client.post(
        "/admin/tenants/membership/add/", {"user": newcomer.pk, "tenant": tenant.pk, "role": Role.ADMIN}
    )
    assert response.status_code == 302
    added = Membership.objects.get(user=newcomer, tenant=tenant)
    assert events("member.added")[-1].details == {"user": "nina", "role": "admin"}
    response = client.post(f"/admin/tenants/membership/{added.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert events("member.removed")[-1].details == {"user": "nina", "role": "admin"}
    last_owner = Membership.objects.get(user=owner, tenant=tenant)
    response = client.post(f"/admin/tenants/membership/{last_owner.pk}/delete/", {"post": "yes"}, follow=True)
    assert b"Not removed: The last owner cannot be removed." in response.content
    assert Membership.objects.filter(pk=last_owner.pk).exists()


def test_tenants_cannot_be_deleted_from_the_admin(client, operator, tenant):
    response = client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_a_webhook_url_is_recorded_without_its_secret_parts(client, operator, tenant):
    url = f"/admin/tenants/tenant/{tenant.pk}/change/"
    data = form_data(client.get(url))
    data["alert_webhook_url"] = "https://hooks.example.com/services/T000/B000/s3cr3tT0k3n?sig=abc"
    assert client.post(url, data).status_code == 302
    event = events("tenant.updated")[-1]
    assert event.details["changes"]["alert_webhook_url"] == "https://hooks.example.com/…"
    assert "s3cr3t" not in str(AuditEvent.objects.values_list("details", flat=True))


def test_re_encrypting_credentials_is_audited_without_key_material(tenant):
    secret = "sk-proj-" + "q" * 40
    upstream_credential_set(tenant=tenant, secret=secret, actor=Actor.system("tests"))
    assert upstream_credential_reencrypt_all() == 1
    event = AuditEvent.objects.get(action="upstream_credential.reencrypted")
    assert (event.chain, event.details) == (PLATFORM_CHAIN, {"credentials": 1})


def test_the_default_plan_is_audited_when_first_created(db):
    plan = plan_get_or_create_default()
    plan_get_or_create_default()
    created = AuditEvent.objects.filter(action="plan.created", target_id=str(plan.pk))
    assert created.count() == 1
    assert created.get().chain == PLATFORM_CHAIN
