"""The console's main journeys in a real browser: sign in and see the overview, raise a quota,
create a key (seen once, with a working copy button) and revoke it, switch tenants, and a viewer
who finds no admin action anywhere."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from conftest import make_key
from tenants.models import ApiKey, Membership, QuotaOverride, Role
from tenants.tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery staple"  # UserFactory's


def test_sign_in_and_see_the_overview(console_page, owner, tenant):
    page = console_page.page
    console_page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login/\?next=/console/$"))
    console_page.screenshot("login")
    console_page.assert_accessible()
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("do not match an account")).to_be_visible()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()

    expect(page).to_have_url(re.compile(rf"/console/{tenant.slug}/$"))
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    expect(page.get_by_role("navigation", name="Console sections").get_by_role("link")).to_have_text(
        [
            "Overview",
            "Usage",
            "Quotas & policy",
            "API keys",
            "Client secrets",
            "Live sessions",
            "Members",
            "Audit trail",
        ]
    )
    expect(page.locator("meter")).to_have_count(5)
    expect(page.get_by_text("0 of 10,000 (0%)")).to_be_visible()
    console_page.screenshot("overview")
    console_page.assert_accessible()
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the menu becomes a strip on top
    console_page.screenshot("overview-mobile")
    console_page.assert_no_errors()


def test_admin_raises_a_quota(sign_in_as, admin_user, tenant):
    QuotaOverride.objects.create(tenant=tenant, secrets_per_day=100)
    console_page = sign_in_as(admin_user)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/")
    page.get_by_role("link", name="Quotas & policy").click()
    limits = page.get_by_role("form", name="Your limits")
    expect(limits.get_by_label("Client secrets per day")).to_have_value("100")
    limits.get_by_label("Client secrets per day").fill("20000")  # above the plan: explained
    limits.get_by_role("button", name="Save limits").click()
    expect(page.get_by_text("cannot exceed the plan's limit of 10000")).to_be_visible()
    console_page.assert_accessible()  # errors are tied to their fields
    limits = page.get_by_role("form", name="Your limits")
    limits.get_by_label("Client secrets per day").fill("500")
    limits.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status").filter(has_text="Limits saved.")).to_be_visible()
    row = page.get_by_role("row", name=re.compile("^Client secrets per day"))
    expect(row.get_by_role("cell").nth(2)).to_have_text("500")  # in force
    assert QuotaOverride.objects.get(tenant=tenant).secrets_per_day == 500
    console_page.screenshot("quotas")
    console_page.assert_accessible()
    console_page.assert_no_errors()


def test_create_a_key_see_it_once_copy_it_and_revoke_it(sign_in_as, owner, tenant):
    console_page = sign_in_as(owner)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/keys/")
    create = page.get_by_role("form", name="Create a key")
    create.get_by_label("Name", exact=True).fill("Kiosk backend")
    create.get_by_label(re.compile("manage:read: ")).check()
    create.get_by_label("Expires").select_option(label="In 90 days")
    create.get_by_role("button", name="Create key").click()

    expect(page.get_by_role("heading", name="Key created")).to_be_visible()
    secret_box = page.get_by_label("API key “Kiosk backend”")
    plaintext = secret_box.input_value()
    assert re.fullmatch(r"rtp_sk_[0-9A-Za-z]{32}_[0-9A-Za-z]{6}", plaintext)
    copy = page.get_by_role("button", name="Copy")
    expect(copy).to_be_visible()
    copy.click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == plaintext
    console_page.screenshot("key-created")
    console_page.assert_accessible()

    page.get_by_role("link", name=re.compile("back to API keys")).click()
    assert plaintext not in page.content()  # shown once, never again
    with pytest.raises(PlaywrightError, match="ERR_CACHE_MISS"):
        page.go_back()  # the browser kept no copy of the page with the key (no-store)
    page.wait_for_url("chrome-error://chromewebdata/")
    console_page.goto(f"/console/{tenant.slug}/keys/")
    key = ApiKey.objects.get(tenant=tenant, name="Kiosk backend")
    row = page.locator(f"#key-{key.pk}")
    expect(row.get_by_text("Active")).to_be_visible()
    console_page.screenshot("keys")
    console_page.assert_accessible()
    row.get_by_role("button", name="Revoke Kiosk backend").click()  # confirm() is accepted
    expect(page.get_by_role("status").filter(has_text="is revoked")).to_be_visible()
    expect(page.locator(f"#key-{key.pk}").get_by_text("Revoked")).to_be_visible()
    key.refresh_from_db()
    assert key.revoked_at is not None
    console_page.assert_no_errors()


def test_member_of_two_tenants_switches_between_them(sign_in_as, owner, tenant, other_tenant):
    Membership.objects.create(user=owner, tenant=other_tenant, role=Role.VIEWER)
    UserFactory(username="dora")
    console_page = sign_in_as(owner)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/members/")
    page.get_by_label("Username or email").fill("dora")
    page.get_by_role("form", name="Add a member").get_by_label("Role").select_option("compliance")
    page.get_by_role("button", name="Add member").click()
    expect(page.get_by_role("status").filter(has_text="dora is now a member (Compliance)")).to_be_visible()
    console_page.screenshot("members")
    console_page.assert_accessible()

    page.get_by_text("Switch tenant").click()
    page.get_by_role("link", name=re.compile("^Bob Co")).click()
    expect(page).to_have_url(re.compile(rf"/console/{other_tenant.slug}/$"))
    expect(page.get_by_role("navigation", name="Console sections").get_by_role("link")).to_have_text(
        ["Overview", "Usage"]
    )
    console_page.assert_no_errors()


def test_viewer_cannot_reach_admin_actions(sign_in_as, viewer, tenant):
    key = make_key(tenant, name="production").api_key
    console_page = sign_in_as(viewer)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/")
    expect(page.get_by_role("navigation", name="Console sections").get_by_role("link")).to_have_text(
        ["Overview", "Usage"]
    )
    expect(page.get_by_role("link", name="Change limits and session policy")).to_have_count(0)
    console_page.screenshot("overview-viewer")
    console_page.assert_accessible()
    pages = (
        "quotas/",
        "keys/",
        "members/",
        f"keys/{key.pk}/settings/",
        "secrets/",
        "sessions/",
        "audit/",
        "audit/integrity/",
    )
    for path in pages:
        response = console_page.goto(f"/console/{tenant.slug}/{path}")
        assert response.status == 404
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    console_page.assert_accessible()
    # a forged POST from the viewer's own signed-in page is refused the same way
    console_page.goto(f"/console/{tenant.slug}/")
    status = page.evaluate(
        """async (url) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const response = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}});
            return response.status;
        }""",
        f"/console/{tenant.slug}/keys/{key.pk}/revoke/",
    )
    assert status == 404
    key.refresh_from_db()
    assert key.revoked_at is None
