"""The client-secret list in a real browser: an admin filters it and revokes a secret after
confirming; the page comes back to the same filter with the secret revoked."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from conftest import make_key
from tokens.models import ClientSecret
from tokens.tests.factories import ClientSecretFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_revoke_a_client_secret(sign_in_as, admin_user, tenant):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    target = ClientSecretFactory(tenant=tenant, api_key=kiosk)
    ClientSecretFactory(tenant=tenant, api_key=backend, kind=ClientSecret.Kind.UPSTREAM)
    ClientSecretFactory(tenant=tenant, api_key=kiosk, status=ClientSecret.Status.USED)
    console_page = sign_in_as(admin_user)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/")
    page.get_by_role("link", name="Client secrets").click()
    expect(page.get_by_role("table").locator("tbody tr")).to_have_count(3)
    console_page.screenshot("secrets")
    console_page.assert_accessible()

    filters = page.get_by_role("form", name="Filter")
    filters.get_by_label("API key").select_option(label=f"kiosk ({kiosk.prefix}…)")
    filters.get_by_label("Status").select_option("active")
    filters.get_by_role("button", name="Apply filter").click()
    rows = page.get_by_role("table").locator("tbody tr")
    expect(rows).to_have_count(1)
    dialogs = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    rows.first.get_by_role("button", name=f"Revoke {target.pk}").click()  # confirm() is accepted
    expect(page.get_by_role("status").filter(has_text="is revoked")).to_be_visible()
    assert len(dialogs) == 1
    assert "can no longer open a session" in dialogs[0]
    expect(page).to_have_url(re.compile(rf"api_key={kiosk.pk}"))  # same filter as before
    expect(page.get_by_text("No client secret matches this filter.")).to_be_visible()
    target.refresh_from_db()
    assert target.status == ClientSecret.Status.REVOKED
    page.get_by_role("link", name="Clear the filter").click()
    expect(page.locator(f"#secret-{target.pk}").get_by_text("Revoked")).to_be_visible()
    console_page.assert_accessible()
    console_page.assert_no_errors()
