"""The operators' Django admin stays usable: every registered model's list renders, and the
tenant and plan edit pages open, for a superuser; tenant members who are not staff get nothing."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from conftest import make_key
from tenants.tests.factories import UserFactory


@pytest.mark.django_db
def test_admin_lists_and_tenant_pages_render_for_operators(tenant, owner):
    make_key(tenant)
    client = Client()
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    index = client.get("/admin/")
    assert index.status_code == 200
    assert "Realtime Platform operations" in index.content.decode()
    for model in admin.site._registry:
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200, url
    assert client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk])).status_code == 200
    assert client.get(reverse("admin:tenants_plan_change", args=[tenant.plan.pk])).status_code == 200
    assert client.get(reverse("admin:tenants_tenant_add")).status_code == 200


@pytest.mark.django_db
def test_tenant_owner_without_staff_flag_gets_no_admin(owner):
    client = Client()
    client.force_login(owner)
    response = client.get("/admin/tenants/tenant/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
