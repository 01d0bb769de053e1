"""Operators' edits in the Django admin leave the same audit trail as the console's: changing a
tenant's session policy, limits or members inline, or a membership on its own page."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from tenants.models import Membership, Role, SessionPolicy
from tenants.tests.factories import UserFactory


class FormValues(HTMLParser):
    """What a browser would submit for the page's main form (the one whose id is given)."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.values: dict[str, list[str]] = {}
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.inside = attrs.get("id") == self.form_id
        if not self.inside or ("name" not in attrs and tag != "option"):
            return
        name = attrs.get("name")
        if tag == "input":
            kind = attrs.get("type", "text")
            if kind in ("checkbox", "radio") and "checked" not in attrs:
                return
            if kind not in ("submit", "button", "file"):
                self.values.setdefault(name, []).append(
                    attrs.get("value", "on" if kind == "checkbox" else "")
                )
        elif tag == "select":
            self._select = name
            self.values.setdefault(name, [])
        elif tag == "option" and self._select and "selected" in attrs:
            self.values[self._select].append(attrs.get("value", ""))
        elif tag == "textarea":
            self._textarea = name
            self.values[name] = [""]

    def handle_data(self, data):
        if self._textarea:
            self.values[self._textarea][0] += data

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self.inside = False


def form_values(html: str, form_id: str) -> dict[str, list[str]]:
    parser = FormValues(form_id)
    parser.feed(html)
    # a textarea's first newline is not part of its value
    return {k: [v[1:] if v.startswith("\n") else v for v in vs] for k, vs in parser.values.items()}


@pytest.fixture
def operator_client(db):
    client = Client()
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    return client


@pytest.mark.django_db
def test_inline_edits_on_the_tenant_page_are_audited_with_before_and_after(
    operator_client, tenant, owner, viewer
):
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    data = form_values(operator_client.get(url).content.decode(), "tenant_form")
    policy_prefix = "session_policy"
    data[f"{policy_prefix}-0-ttl_max_seconds"] = ["900"]
    viewer_row = next(
        key.rsplit("-", 1)[0]
        for key, value in data.items()
        if key.startswith("memberships-")
        and key.endswith("-id")
        and value == [str(Membership.objects.get(user=viewer).pk)]
    )
    data[f"{viewer_row}-role"] = [Role.COMPLIANCE]
    response = operator_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]

    assert SessionPolicy.objects.get(tenant=tenant).ttl_max_seconds == 900
    policy_event = AuditEvent.objects.filter(tenant=tenant, action="policy.changed").latest("id")
    assert policy_event.details["changes"]["ttl_max_seconds"] == {"before": "600", "after": "900"}
    assert policy_event.details["via"] == "admin"
    assert policy_event.actor_label == "ops"
    role_event = AuditEvent.objects.filter(tenant=tenant, action="member.role_changed").latest("id")
    assert role_event.details["user"] == "victor"
    assert role_event.details["changes"]["role"] == {"before": "viewer", "after": "compliance"}


@pytest.mark.django_db
def test_membership_page_edits_are_audited(operator_client, tenant, viewer):
    membership = Membership.objects.get(user=viewer)
    url = reverse("admin:tenants_membership_change", args=[membership.pk])
    data = form_values(operator_client.get(url).content.decode(), "membership_form")
    data["role"] = [Role.ADMIN]
    assert operator_client.post(url, data).status_code == 302
    event = AuditEvent.objects.filter(tenant=tenant, action="member.role_changed").latest("id")
    assert event.details["role"] == {"before": "viewer", "after": "admin"}
    delete_url = reverse("admin:tenants_membership_delete", args=[membership.pk])
    assert operator_client.post(delete_url, {"post": "yes"}).status_code == 302
    assert AuditEvent.objects.filter(tenant=tenant, action="member.removed", details__user="victor").exists()
    assert not Membership.objects.filter(pk=membership.pk).exists()
