"""The audit pages in a real browser: compliance staff filter the trail, open an event, export
the selection as CSV (a real download, verified offline) and verify the chain."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from audit.actors import Actor
from audit.chain import chain_for
from audit.export_verification import audit_verify_export
from audit.models import AuditEvent
from audit.services import audit_checkpoint_create, audit_record
from conftest import make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_export_audit_csv_as_compliance(sign_in_as, compliance_user, tenant, tmp_path):
    key = make_key(tenant, name="kiosk backend").api_key
    for n in range(3):
        audit_record(
            tenant=tenant,
            actor=Actor.for_api_key(key, ip="198.51.100.4"),
            action="session.refused",
            target_type="tokens.clientsecret",
            target_id=f"cs_refused{n}",
            request_id=f"req_refused_{n}",
            details={"reason": "quota", "model": "gpt-realtime"},
        )
    audit_checkpoint_create(chain=chain_for(tenant.pk))
    console_page = sign_in_as(compliance_user)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/")
    page.get_by_role("navigation", name="Console sections").get_by_role("link", name="Audit trail").click()
    expect(page.get_by_role("heading", name="Audit trail", level=1)).to_be_visible()
    console_page.screenshot("audit-trail")
    console_page.assert_accessible()

    filters = page.get_by_role("form", name="Filter")
    filters.get_by_label("Action").fill("session.refused")
    filters.get_by_role("button", name="Apply filter").click()
    expect(page).to_have_url(re.compile(r"action=session.refused"))
    rows = page.get_by_role("table", name=re.compile("Events matching the filter")).locator("tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("req_refused_2")
    console_page.assert_accessible()

    export = page.get_by_role("form", name="Export")
    export.get_by_label("Format").select_option("csv")
    with page.expect_download() as download_info:
        export.get_by_role("button", name="Download").click()
    download = download_info.value
    assert re.fullmatch(rf"audit-{tenant.slug}-\d{{8}}T\d{{6}}Z\.csv", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    report = audit_verify_export(saved)
    assert report.ok, report.summary()
    assert report.rows == 3
    assert report.manifest["filter"] == {"action": "session.refused"}
    exported = AuditEvent.objects.get(chain=chain_for(tenant.pk), action="export.created")
    assert exported.actor_label == "carol"

    rows.first.get_by_role("link").click()
    expect(page.get_by_role("heading", name=re.compile("session.refused"), level=1)).to_be_visible()
    expect(page.get_by_text("198.51.100.4")).to_be_visible()
    console_page.screenshot("audit-event")
    console_page.assert_accessible()
    page.get_by_role("link", name="Everything in this request").click()
    expect(page.get_by_role("table").locator("tbody tr")).to_have_count(1)

    page.get_by_role("navigation", name="Audit trail pages").get_by_role("link", name="Integrity").click()
    expect(page.get_by_role("table").locator("tbody tr")).to_have_count(1)  # the checkpoint
    page.get_by_role("link", name="Verify now").click()
    expect(page.get_by_role("status").filter(has_text="Verified: the trail is intact.")).to_be_visible()
    console_page.screenshot("audit-integrity")
    console_page.assert_accessible()
    console_page.assert_no_errors()
