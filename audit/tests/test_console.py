"""The console's audit pages through the test client: what compliance staff and tenant admins
see (filters, pages, one event, times in the tenant's zone), what they download (verifiable
exports and the PDF report, each audited as the user who asked), and the chain's integrity
(verify now, the first broken seq, signed checkpoints). Who may open them is in
tenants/tests/test_console_permissions.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.actors import Actor
from audit.chain import chain_for
from audit.export_verification import audit_verify_export
from audit.models import AuditCheckpoint, AuditEvent
from audit.selectors import audit_chain_head
from audit.services import audit_checkpoint_create, audit_record
from audit.tests.conftest import record_many
from audit.tests.test_report_and_responses import pdf_text

pytestmark = pytest.mark.django_db


def url(tenant, name, *args):
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def signed_in(user) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(user)
    return client


def seqs(response) -> list[int]:
    return [event.seq for event in response.context["page"].events]


# --- The viewer --------------------------------------------------------------------------------


def test_events_come_newest_first_in_pages_that_cover_the_trail_once(compliance_user, tenant):
    record_many(tenant, 120)
    head = audit_chain_head(tenant=tenant).seq
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "audit"))
    assert response.status_code == 200
    assert seqs(response) == list(range(head, head - 50, -1))
    seen = seqs(response)
    while response.context["older_query"]:
        response = client.get(url(tenant, "audit") + "?" + response.context["older_query"])
        seen += seqs(response)
    assert seen == list(range(head, 0, -1))
    # and back again, towards the newest
    newer = client.get(url(tenant, "audit") + "?" + response.context["newer_query"])
    assert seqs(newer)[0] == seqs(response)[0] + 50
    assert 'rel="next"' in newer.content.decode()


def test_filters_select_by_action_actor_target_and_request(compliance_user, tenant):
    record_many(tenant, 10)
    key_event = audit_record(
        tenant=tenant,
        actor=Actor("user", "1", "alice"),
        action="key.revoked",
        target_type="tenants.apikey",
        target_id="42",
        request_id="req_special",
    )
    client = signed_in(compliance_user)

    def filtered(**params):
        response = client.get(url(tenant, "audit"), params)
        assert response.status_code == 200
        return seqs(response)

    assert filtered(action="key.revoked") == [key_event.seq]
    assert filtered(actor="alice") == [key_event.seq]
    assert filtered(actor_type="system") == [1]  # tenant.created by the factory
    assert filtered(target_type="tenants.apikey", target_id="42") == [key_event.seq]
    assert filtered(request_id="req_special") == [key_event.seq]
    assert filtered(request_id="req_3") == [5]  # record_many's 4th event, after tenant.created
    assert filtered(action="test.event", actor="user1") == [8, 3]
    assert filtered(action="no.such") == []
    body = client.get(url(tenant, "audit"), {"action": "no.such"}).content.decode()
    assert "No event matches this filter." in body
    assert "Clear the filter" in body


def local(moment: datetime, zone: str, fmt: str = "%Y-%m-%dT%H:%M") -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime(fmt)


def tomorrow_at(hour: int) -> datetime:
    """A time after every event the fixtures recorded (a chain's clock never goes backwards)."""
    day = (timezone.now() + timedelta(days=1)).date()
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_a_time_range_is_typed_in_the_tenants_time_zone(compliance_user, tenant, clock):
    tenant.time_zone = "Europe/Paris"
    tenant.save()
    ticking = clock(tomorrow_at(8))
    early = record_many(tenant, 1)[0]
    ticking.now = tomorrow_at(10)
    late = record_many(tenant, 1)[0]
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "audit"), {"since": local(tomorrow_at(9), "Europe/Paris")})
    assert seqs(response) == [late.seq]
    since, until = local(tomorrow_at(7), "Europe/Paris"), local(tomorrow_at(10), "Europe/Paris")
    response = client.get(url(tenant, "audit"), {"since": since, "until": until})
    assert seqs(response) == [early.seq]  # until is exclusive
    body = response.content.decode()
    assert local(early.created_at, "Europe/Paris", "%Y-%m-%d %H:%M:%S") in body  # shown in Paris time
    assert local(early.created_at, "UTC", "%Y-%m-%d %H:%M:%S") not in body
    assert "Europe/Paris" in body
    assert ("since", since) in response.context["kept"]  # the pager and the export keep it as typed


def test_bad_filters_are_explained_on_their_fields_and_list_nothing(compliance_user, tenant):
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "audit"), {"since": "2026-02-01T00:00", "until": "2026-01-01T00:00"})
    assert response.status_code == 200
    assert response.context["page"] is None
    assert response.context["form"].errors == {"since": ["since must be earlier than until."]}
    response = client.get(url(tenant, "audit"), {"since": "last tuesday", "actor_type": "robot"})
    assert set(response.context["form"].errors) == {"since", "actor_type"}
    assert 'aria-invalid="true"' in response.content.decode()


def test_a_hand_edited_cursor_starts_again_from_the_newest_page(compliance_user, tenant):
    record_many(tenant, 3)
    response = signed_in(compliance_user).get(url(tenant, "audit"), {"cursor": "x999"})
    assert response.status_code == 200
    assert seqs(response) == [4, 3, 2, 1]
    assert "Invalid cursor" in response.content.decode()


def test_the_action_list_offers_the_actions_in_this_tenants_trail(compliance_user, tenant, other_tenant):
    record_many(tenant, 2, action="secret.issued")
    record_many(other_tenant, 2, action="bob.only")
    body = signed_in(compliance_user).get(url(tenant, "audit")).content.decode()
    assert '<option value="secret.issued">' in body
    assert "bob.only" not in body


def test_the_viewer_reads_a_fixed_number_of_queries_whatever_the_page_holds(
    compliance_user, tenant, django_assert_max_num_queries
):
    record_many(tenant, 60)
    client = signed_in(compliance_user)
    client.get(url(tenant, "audit"))  # session, caches
    with django_assert_max_num_queries(8):
        client.get(url(tenant, "audit"), {"action": "test.event", "since": "2020-01-01T00:00"})


# --- One event ---------------------------------------------------------------------------------


def test_an_event_shows_everything_recorded_and_links_to_its_context(compliance_user, tenant):
    event = audit_record(
        tenant=tenant,
        actor=Actor("user", "1", "alice", ip="198.51.100.7"),
        action="policy.changed",
        target_type="tenants.sessionpolicy",
        target_id="3",
        request_id="req_abc",
        details={"changes": {"ttl_max_seconds": {"before": 600, "after": 300}}},
    )
    response = signed_in(compliance_user).get(url(tenant, "audit-event", event.seq))
    body = response.content.decode()
    for text in ("policy.changed", "alice", "198.51.100.7", "tenants.sessionpolicy", "req_abc", event.hash):
        assert text in body
    assert "&quot;ttl_max_seconds&quot;: {" in body  # the details, pretty-printed
    audit = url(tenant, "audit")
    assert f"{audit}?request_id=req_abc" in body
    assert f"{audit}?actor=alice" in body
    assert f"{audit}?target_type=tenants.sessionpolicy&amp;target_id=3" in body
    assert url(tenant, "audit-event", event.seq - 1) in body
    assert url(tenant, "audit-event", event.seq + 1) not in body  # the newest has no next


def test_an_event_past_the_head_is_not_found(compliance_user, tenant):
    head = audit_chain_head(tenant=tenant).seq
    assert signed_in(compliance_user).get(url(tenant, "audit-event", head + 1)).status_code == 404


# --- Exports -----------------------------------------------------------------------------------


def test_a_csv_export_of_a_filtered_selection_verifies_offline_and_is_audited(
    compliance_user, tenant, tmp_path
):
    record_many(tenant, 6, action="secret.issued")
    record_many(tenant, 3, action="session.refused")
    response = signed_in(compliance_user).post(
        url(tenant, "audit-export"), {"format": "csv", "action": "session.refused"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith(f'attachment; filename="audit-{tenant.slug}-')
    assert response["Cache-Control"] == "no-store"
    data = b"".join(response.streaming_content)
    rows = [row for row in csv.reader(io.StringIO(data.decode())) if not row[0].startswith("#")]
    assert [row[rows[0].index("action")] for row in rows[1:]] == ["session.refused"] * 3
    target = tmp_path / "export.csv"
    target.write_bytes(data)
    report = audit_verify_export(target)
    assert report.ok, report.summary()
    assert report.rows == 3
    assert report.manifest["filter"] == {"action": "session.refused"}
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), action="export.created")
    assert (event.actor_type, event.actor_label, event.ip) == ("user", "carol", "203.0.113.9")
    assert event.details["format"] == "csv"
    assert event.details["row_count"] == 3


def test_a_json_lines_export_of_a_period_in_the_tenants_zone(compliance_user, tenant, clock, tmp_path):
    tenant.time_zone = "America/New_York"
    tenant.save()
    ticking = clock(tomorrow_at(3))
    record_many(tenant, 2)
    ticking.now = tomorrow_at(6)
    record_many(tenant, 4)
    since = local(tomorrow_at(5), "America/New_York")
    response = signed_in(compliance_user).post(
        url(tenant, "audit-export"), {"format": "jsonl", "since": since}
    )
    target = tmp_path / "export.jsonl"
    target.write_bytes(b"".join(response.streaming_content))
    report = audit_verify_export(target)
    assert report.ok, report.summary()
    assert report.rows == 4
    assert report.manifest["filter"] == {"since": tomorrow_at(5).strftime("%Y-%m-%dT%H:%M:%S.000000Z")}


def test_a_pdf_report_of_a_period(admin_user, tenant):
    record_many(tenant, 2, action="session.refused")
    response = signed_in(admin_user).post(
        url(tenant, "audit-export"), {"format": "pdf", "since": "2020-01-01T00:00"}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    text = pdf_text(response.content)
    assert "Audit report: Alice Co (alice-co)" in text
    assert "Chain verification: OK" in text
    assert "session.refused" in text
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), action="export.created")
    assert (event.actor_label, event.details["format"]) == ("alan", "pdf")


def test_a_refused_export_says_why_exports_nothing_and_keeps_the_filter(compliance_user, tenant):
    client = signed_in(compliance_user)
    before = AuditEvent.objects.count()
    response = client.post(url(tenant, "audit-export"), {"format": "xlsx", "action": "key.created"})
    assert response.status_code == 302
    assert response["Location"] == url(tenant, "audit") + "?action=key.created"
    page = client.get(response["Location"])
    assert "Nothing was exported: Select a valid choice." in page.content.decode()
    response = client.post(url(tenant, "audit-export"), {"format": "csv", "until": "not a date"})
    assert response.status_code == 302
    assert AuditEvent.objects.count() == before


def test_the_export_form_carries_the_filter_of_the_page(compliance_user, tenant):
    body = signed_in(compliance_user).get(url(tenant, "audit"), {"action": "key.created"}).content.decode()
    form = body[body.index('action="' + url(tenant, "audit-export")) :]
    assert '<input type="hidden" name="action" value="key.created">' in form[: form.index("</form>")]


# --- Integrity ---------------------------------------------------------------------------------


def test_verifying_an_intact_trail_says_so(compliance_user, tenant):
    record_many(tenant, 5)
    client = signed_in(compliance_user)
    page = client.get(url(tenant, "audit-integrity"))
    assert page.context["report"] is None  # verifying is asked for, not done on every visit
    assert "Verify now" in page.content.decode()
    response = client.get(url(tenant, "audit-integrity"), {"verify": "1"})
    report = response.context["report"]
    assert (report.ok, report.rows, report.last_seq) == (True, 6, 6)
    assert "Verified: the trail is intact." in response.content.decode()
    assert AuditEvent.objects.filter(chain=chain_for(tenant.pk)).count() == 6  # verifying records nothing


def test_verifying_a_tampered_trail_names_the_first_broken_event(compliance_user, tenant, tamper):
    record_many(tenant, 8)
    tamper(
        "UPDATE audit_auditevent SET action = 'key.created' WHERE chain = %s AND seq = 4",
        [chain_for(tenant.pk)],
    )
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 7", [chain_for(tenant.pk)])
    response = signed_in(compliance_user).get(url(tenant, "audit-integrity"), {"verify": "1"})
    body = response.content.decode()
    assert "Broken at event #4: altered." in body
    assert url(tenant, "audit-event", 4) in body
    assert 'role="alert"' in body


def test_signed_checkpoints_are_listed_newest_first_fifty_a_page(compliance_user, tenant):
    for _ in range(55):
        record_many(tenant, 1)
        audit_checkpoint_create(chain=chain_for(tenant.pk))
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "audit-integrity"))
    listed = [c.seq for c in response.context["checkpoints"]]
    assert listed == list(range(56, 6, -1))
    older = client.get(url(tenant, "audit-integrity"), {"before": response.context["older_checkpoints"]})
    assert [c.seq for c in older.context["checkpoints"]] == [6, 5, 4, 3, 2]
    assert older.context["older_checkpoints"] is None
    assert AuditCheckpoint.objects.filter(chain=chain_for(tenant.pk)).count() == 55


def test_times_on_the_integrity_page_are_in_the_tenants_zone(compliance_user, tenant, clock):
    tenant.time_zone = "Asia/Tokyo"
    tenant.save()
    clock(tomorrow_at(20))
    record_many(tenant, 1)
    body = signed_in(compliance_user).get(url(tenant, "audit-integrity")).content.decode()
    assert f"{local(tomorrow_at(20), 'Asia/Tokyo', '%Y-%m-%d %H:%M:%S')}</time> (Asia/Tokyo)" in body
