"""Services and selectors added for the console: per-key settings, switching the upstream mode,
finding a user to add, the roles a manager may grant."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEvent
from conftest import make_key
from realtime_platform.errors import BadRequest, Conflict
from tenants.access import assignable_roles
from tenants.models import QuotaOverride, Role, Tenant
from tenants.selectors import user_find
from tenants.services import api_key_settings_update, tenant_upstream_mode_set, upstream_credential_set
from tenants.tests.factories import UserFactory

ACTOR = Actor.system("tests")


@pytest.mark.django_db
def test_key_sub_limits_cannot_exceed_the_tenants_limit_in_force(tenant):
    QuotaOverride.objects.create(tenant=tenant, secrets_per_day=50)
    key = make_key(tenant).api_key
    with pytest.raises(BadRequest) as refused:
        api_key_settings_update(api_key=key, actor=ACTOR, values={"secrets_per_day": 51})
    assert refused.value.param == "secrets_per_day"
    assert refused.value.code == "above_tenant_limit"
    api_key_settings_update(api_key=key, actor=ACTOR, values={"secrets_per_day": 50})
    key.refresh_from_db()
    assert key.secrets_per_day == 50
    with pytest.raises(BadRequest):
        make_key(tenant, name="too generous", cost_usd_per_month=Decimal("1000.01"))


@pytest.mark.django_db
def test_key_settings_are_audited_only_when_something_changes(tenant):
    key = make_key(tenant).api_key
    values = {
        "secrets_per_day": 5,
        "concurrent_sessions": None,
        "cost_usd_per_month": None,
        "secret_kind": "",
    }
    api_key_settings_update(api_key=key, actor=ACTOR, values=values)
    api_key_settings_update(api_key=key, actor=ACTOR, values=values)
    events = AuditEvent.objects.filter(action="key.settings_changed")
    assert events.count() == 1
    assert events.get().details["changes"] == {"secrets_per_day": {"before": None, "after": 5}}


@pytest.mark.django_db
def test_key_settings_refuse_bad_values_and_revoked_keys(tenant):
    key = make_key(tenant).api_key
    with pytest.raises(BadRequest):
        api_key_settings_update(api_key=key, actor=ACTOR, values={"secret_kind": "carrier-pigeon"})
    with pytest.raises(BadRequest):
        api_key_settings_update(api_key=key, actor=ACTOR, values={"name": "renamed"})
    key.revoked_at = timezone.now()
    key.save()
    with pytest.raises(Conflict):
        api_key_settings_update(api_key=key, actor=ACTOR, values={"secrets_per_day": 1})


@pytest.mark.django_db
def test_own_upstream_mode_needs_a_saved_key(tenant):
    with pytest.raises(BadRequest) as refused:
        tenant_upstream_mode_set(tenant=tenant, mode="own", actor=ACTOR)
    assert refused.value.code == "no_credential"
    upstream_credential_set(tenant=tenant, secret="sk-test-" + "x" * 40, actor=ACTOR)
    tenant_upstream_mode_set(tenant=tenant, mode="own", actor=ACTOR)
    tenant_upstream_mode_set(tenant=tenant, mode="own", actor=ACTOR)  # no-op, not audited twice
    tenant.refresh_from_db()
    assert tenant.upstream_mode == Tenant.UpstreamMode.OWN
    assert AuditEvent.objects.filter(action="tenant.upstream_mode_changed").count() == 1
    with pytest.raises(BadRequest):
        tenant_upstream_mode_set(tenant=tenant, mode="somebody-elses", actor=ACTOR)


@pytest.mark.django_db
def test_user_find_by_username_then_unique_email_and_only_active_users(db):
    dora = UserFactory(username="dora", email="dora@example.com")
    UserFactory(username="gone", email="gone@example.com", is_active=False)
    UserFactory(username="t1", email="twin@example.com")
    UserFactory(username="t2", email="twin@example.com")
    assert user_find(identifier=" dora ") == dora
    assert user_find(identifier="DORA@example.com") == dora
    assert user_find(identifier="gone") is None
    assert user_find(identifier="twin@example.com") is None
    assert user_find(identifier="") is None


def test_admins_grant_every_role_but_owner():
    assert set(assignable_roles(manager_role=Role.OWNER)) == set(Role.values)
    assert Role.OWNER not in assignable_roles(manager_role=Role.ADMIN)
    assert assignable_roles(manager_role=Role.VIEWER) == ()
