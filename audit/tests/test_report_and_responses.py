from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.http import HttpRequest
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from pypdf import PdfReader

from audit.actors import Actor
from audit.chain import chain_for
from audit.export_verification import audit_verify_export
from audit.exports import _in_thread, audit_export_response, audit_report_pdf
from audit.models import AuditEvent
from audit.selectors import AuditFilter, audit_filter_from_params
from audit.services import audit_record
from audit.tests.conftest import record_many
from tenants.models import Tenant
from tenants.tests.factories import TenantFactory

CAROL = Actor("user", "7", "carol")


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


# --- PDF --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_pdf_report_shows_counts_notable_events_and_the_verification_result(tenant):
    record_many(tenant, 4, action="secret.issued")
    record_many(tenant, 2, action="session.refused")
    audit_record(
        tenant=tenant,
        actor=Actor("user", "1", "alice"),
        action="policy.changed",
        details={"changes": {"ttl_max_seconds": {"before": 600, "after": 300}}},
    )
    report = audit_report_pdf(tenant=tenant, actor=CAROL, filters=AuditFilter())
    assert report.pdf.startswith(b"%PDF-")
    text = pdf_text(report.pdf)
    assert "Audit report: Alice Co (alice-co)" in text
    assert "Chain verification: OK. 8 rows verified" in text
    assert "Events in period: 8" in text
    assert "secret.issued" in text
    assert "session.refused" in text
    lines = text.splitlines()
    assert any(line.startswith("secret.issued") and line.rstrip().endswith("4") for line in lines)
    assert any(line.startswith("session.refused") and line.rstrip().endswith("2") for line in lines)
    assert "Notable events: 4" in text  # tenant.created, 2 refusals, the policy change
    assert "ttl_max_seconds" in text
    assert "alice" in text
    event = AuditEvent.objects.get(chain=chain_for(tenant.pk), action="export.created")
    assert event.details["format"] == "pdf"
    assert event.details["chain_verified"] is True
    assert report.event == event


@pytest.mark.django_db
def test_the_pdf_report_covers_only_its_period_and_says_when_the_chain_is_broken(clock, tamper):
    ticking = clock(timezone.now() - timedelta(days=10))
    tenant = TenantFactory(slug="reported")
    record_many(tenant, 3, action="key.revoked")
    ticking.now = timezone.now()
    record_many(tenant, 5, action="secret.issued")
    tamper(
        "UPDATE audit_auditevent SET action = 'key.created' WHERE chain = %s AND seq = 3",
        [chain_for(tenant.pk)],
    )
    period = audit_filter_from_params({"since": (timezone.now() - timedelta(days=1)).date().isoformat()})
    report = audit_report_pdf(tenant=tenant, actor=CAROL, filters=period)
    text = pdf_text(report.pdf)
    assert "Events in period: 5" in text
    assert "key.revoked" not in text
    assert "Chain verification: FAILED at seq 3: altered" in text
    assert report.verification.ok is False


@pytest.mark.django_db
def test_text_outside_latin1_does_not_break_the_report(tenant):
    audit_record(tenant=tenant, actor=Actor("user", "9", "Łukasz Ångström ﬁ 日本"), action="member.added")
    text = pdf_text(audit_report_pdf(tenant=tenant, actor=CAROL, filters=AuditFilter()).pdf)
    assert "?ukasz Ångström fi ??" in text


# --- Responses --------------------------------------------------------------------------------


def download(request: HttpRequest, slug: str, fmt: str):
    tenant = Tenant.objects.get(slug=slug)
    return audit_export_response(
        request=request, tenant=tenant, actor=CAROL, fmt=fmt, filters=audit_filter_from_params(request.GET)
    )


urlpatterns = [path("download/<slug:slug>/<str:fmt>", download)]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_download_streams_under_wsgi_and_verifies(tmp_path, tenant, fmt):
    record_many(tenant, 5)
    response = Client().get(f"/download/{tenant.slug}/{fmt}?action=test.event")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"].startswith(f'attachment; filename="audit-{tenant.slug}-')
    assert response["Cache-Control"] == "no-store"
    target = tmp_path / f"download.{fmt}"
    target.write_bytes(b"".join(response.streaming_content))
    report = audit_verify_export(target)
    assert report.ok, report.summary()
    assert report.rows == 5
    assert int(response["X-Audit-Export-Event"]) == AuditEvent.objects.get(action="export.created").seq


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
def test_a_pdf_download(tenant):
    response = Client().get(f"/download/{tenant.slug}/pdf")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert "Chain verification: OK" in pdf_text(response.content)


@pytest.mark.django_db(transaction=True)
async def test_a_download_streams_chunk_by_chunk_under_asgi(tmp_path, tenant):
    """Under an ASGI server the response is an async iterator fed one chunk at a time from the
    request's thread (Django would otherwise read a sync iterator to the end before sending)."""
    from asgiref.sync import sync_to_async
    from django.core.handlers.asgi import ASGIRequest
    from django.db import connections

    await sync_to_async(record_many)(tenant, 5)
    scope = {"type": "http", "method": "GET", "path": "/download", "query_string": b"", "headers": []}
    request = ASGIRequest(scope, io.BytesIO())
    response = await sync_to_async(audit_export_response)(
        request=request, tenant=tenant, actor=CAROL, fmt="csv", filters=AuditFilter()
    )
    try:
        assert response.is_async
        chunks = [chunk async for chunk in response.streaming_content]
        target = tmp_path / "download.csv"
        target.write_bytes(b"".join(chunks))
        report = await sync_to_async(audit_verify_export)(target)
        assert report.ok, report.summary()
        assert report.rows == 6
    finally:
        await sync_to_async(connections.close_all)()  # the worker thread's connection


async def test_the_async_wrapper_closes_the_generator_when_the_client_goes_away():
    closed = []

    def chunks():
        try:
            yield b"one"
            yield b"two"
            yield b"three"
        finally:
            closed.append(True)

    stream = _in_thread(chunks())
    assert await stream.__anext__() == b"one"
    await stream.aclose()
    assert closed == [True]


def test_bad_filter_parameters_are_refused_by_name():
    from realtime_platform.errors import BadRequest

    for params, param in [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
        ({"actor_type": "robot"}, "actor_type"),
        ({"action": "x" * 65}, "action"),
    ]:
        with pytest.raises(BadRequest) as caught:
            audit_filter_from_params(params)
        assert caught.value.param == param
