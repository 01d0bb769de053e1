"""The console's session pages through the test client: the list (live by default, filters,
pages, refreshing itself) and the kill switch (one session or all, audited as the user, the
close order sent over the channel layer once the change commits). Who may open them is in
tenants/tests/test_console_permissions.py; a real relayed session ended from the browser is in
tests/browser/test_console_sessions_browser.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from conftest import make_key
from relay.core import GROUP_KEY, GROUP_SESSION, GROUP_TENANT, TERMINATE
from relay.models import RealtimeSession
from relay.tests.test_api import Listener

pytestmark = pytest.mark.django_db


def url(tenant, name, *args):
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def signed_in(user) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.9")
    client.force_login(user)
    return client


def session_of(tenant: Any, api_key: Any = None, **fields: Any) -> RealtimeSession:
    return RealtimeSession.objects.create(
        tenant=tenant, api_key=api_key, **{"model": "gpt-realtime", **fields}
    )


def ended(tenant: Any, api_key: Any = None, **fields: Any) -> RealtimeSession:
    return session_of(
        tenant,
        api_key,
        status=RealtimeSession.Status.ENDED,
        ended_at=timezone.now(),
        end_reason="client_closed",
        **fields,
    )


def listed(response) -> list[str]:
    return [row["session"].pk for row in response.context["rows"]]


# --- The list ----------------------------------------------------------------------------------


def test_live_sessions_by_default_and_the_rest_on_request(compliance_user, tenant, other_tenant):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    start = timezone.now() - timedelta(minutes=30)
    live = session_of(tenant, kiosk, started_at=start, audio_in_ms=90_000, input_tokens=40, output_tokens=2)
    mini = session_of(
        tenant,
        backend,
        model="gpt-realtime-mini",
        credential="relay_token",
        started_at=start + timedelta(minutes=1),
    )
    done = ended(tenant, kiosk, started_at=start - timedelta(hours=1))
    session_of(other_tenant)
    client = signed_in(compliance_user)

    def filtered(**params):
        response = client.get(url(tenant, "sessions"), params)
        assert response.status_code == 200
        return listed(response)

    assert filtered() == [mini.pk, live.pk]
    assert filtered(status="ended") == [done.pk]
    assert filtered(status="all") == [mini.pk, live.pk, done.pk]
    assert filtered(status="all", api_key=str(kiosk.pk)) == [live.pk, done.pk]
    assert filtered(model="gpt-realtime-mini") == [mini.pk]
    assert filtered(credential="relay_token") == [mini.pk]
    body = client.get(url(tenant, "sessions")).content.decode()
    assert "<strong>2</strong> live sessions now." in body
    row = body[body.index(f'id="session-{live.pk}"') :]
    assert "1.5" in row[: row.index("</tr>")]  # audio minutes
    assert "/terminate/" not in body  # compliance reads, never acts
    assert "Terminate all" not in body


def test_a_start_range_is_typed_in_the_tenants_time_zone(compliance_user, tenant):
    tenant.time_zone = "America/Sao_Paulo"  # UTC-3
    tenant.save()
    early = ended(tenant, started_at=datetime(2026, 4, 2, 11, 0, tzinfo=UTC))  # 08:00 local
    late = ended(tenant, started_at=datetime(2026, 4, 2, 13, 0, tzinfo=UTC))  # 10:00 local
    client = signed_in(compliance_user)
    response = client.get(url(tenant, "sessions"), {"status": "all", "started_after": "2026-04-02T09:00"})
    assert listed(response) == [late.pk]
    response = client.get(
        url(tenant, "sessions"),
        {"status": "all", "started_after": "2026-04-02T10:00", "started_before": "2026-04-02T09:00"},
    )
    assert response.context["page"] is None
    assert list(response.context["form"].errors) == ["started_before"]
    assert early.pk not in response.content.decode()


def test_pages_of_fifty_and_a_stale_cursor(compliance_user, tenant, other_tenant):
    start = timezone.now() - timedelta(hours=3)
    made = [ended(tenant, started_at=start + timedelta(seconds=i)) for i in range(60)]
    client = signed_in(compliance_user)
    first = client.get(url(tenant, "sessions"), {"status": "all"})
    second = client.get(url(tenant, "sessions") + "?" + first.context["older_query"])
    assert listed(first) + listed(second) == [s.pk for s in reversed(made)]
    assert second.context["older_query"] == ""
    theirs = session_of(other_tenant)
    response = client.get(url(tenant, "sessions"), {"status": "all", "after": theirs.pk})
    assert listed(response) == listed(first)
    assert "That page link is not valid any more" in response.content.decode()


def test_the_list_refreshes_itself_as_background_activity(compliance_user, tenant):
    live = session_of(tenant)
    client = signed_in(compliance_user)
    page = client.get(url(tenant, "sessions"), {"status": "active"}).content.decode()
    assert 'hx-trigger="every 10s"' in page
    assert '"X-Console-Background": "1"' in page
    assert f'hx-get="{url(tenant, "sessions")}?status=active"' in page
    fragment = client.get(url(tenant, "sessions"), {"status": "active"}, HTTP_HX_REQUEST="true")
    body = fragment.content.decode()
    assert "<html" not in body
    assert body.lstrip().startswith('<div id="sessions-list"')
    assert live.pk in body


def test_the_list_reads_a_fixed_number_of_queries(compliance_user, tenant, django_assert_max_num_queries):
    keys = [make_key(tenant, name=f"key {i}").api_key for i in range(3)]
    for i in range(30):
        session_of(tenant, keys[i % 3])
    client = signed_in(compliance_user)
    client.get(url(tenant, "sessions"))
    with django_assert_max_num_queries(8):
        client.get(url(tenant, "sessions"), {"model": "gpt-realtime"})


# --- The kill switch ---------------------------------------------------------------------------


def test_terminating_a_session_is_audited_and_sent_to_it_once_committed(
    owner, tenant, django_capture_on_commit_callbacks
):
    live = session_of(tenant, make_key(tenant).api_key)
    listener = Listener(GROUP_SESSION.format(live.pk))
    client = signed_in(owner)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            url(tenant, "session-terminate", live.pk), {"return_query": "status=active&next=//evil.example"}
        )
    assert response.status_code == 302
    assert response["Location"] == url(tenant, "sessions") + "?status=active"
    assert len(callbacks) == 1
    message = listener.message()
    assert (message["type"], message["reason"], message["tenant_id"]) == (TERMINATE, "terminated", tenant.pk)
    event = AuditEvent.objects.get(action="session.terminated")
    assert (event.actor_label, event.ip, event.target_id) == ("alice", "203.0.113.9", live.pk)
    assert "is being ended" in client.get(response["Location"]).content.decode()
    # the row is ended by the relay when the socket closes, not by the console
    live.refresh_from_db()
    assert live.status == RealtimeSession.Status.ACTIVE


def test_terminating_an_ended_session_does_nothing(owner, tenant, django_capture_on_commit_callbacks):
    done = ended(tenant)
    client = signed_in(owner)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url(tenant, "session-terminate", done.pk))
    assert callbacks == []
    assert not AuditEvent.objects.filter(action="session.terminated").exists()
    assert "had already ended" in client.get(response["Location"]).content.decode()


def test_terminate_all_of_the_tenant_or_of_one_key(admin_user, tenant, django_capture_on_commit_callbacks):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    for key in (kiosk, kiosk, backend):
        session_of(tenant, key)
    ended(tenant, kiosk)
    everyone = Listener(GROUP_TENANT.format(tenant.pk))
    of_kiosk = Listener(GROUP_KEY.format(kiosk.pk))
    client = signed_in(admin_user)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(tenant, "sessions-terminate-all"), {"api_key": str(kiosk.pk)})
    assert of_kiosk.message()["type"] == TERMINATE
    assert "2 live sessions of “kiosk” are being ended." in client.get(response["Location"]).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(tenant, "sessions-terminate-all"), {"api_key": ""})
    assert everyone.message()["type"] == TERMINATE
    assert "3 live sessions are being ended." in client.get(response["Location"]).content.decode()
    scopes = [
        (e.actor_label, e.details["scope"], e.details["active"])
        for e in AuditEvent.objects.filter(action="session.terminated").order_by("seq")
    ]
    assert scopes == [("alan", "api_key", 2), ("alan", "tenant", 3)]


def test_terminate_all_refuses_another_tenants_key(
    owner, tenant, other_tenant, django_capture_on_commit_callbacks
):
    theirs = make_key(other_tenant, name="bob key").api_key
    session_of(other_tenant, theirs)
    client = signed_in(owner)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url(tenant, "sessions-terminate-all"), {"api_key": str(theirs.pk)})
    assert callbacks == []
    assert not AuditEvent.objects.filter(action="session.terminated").exists()
    assert "Choose an API key of this tenant" in client.get(response["Location"]).content.decode()


def test_managers_see_the_kill_switch_and_terminate_only_live_sessions(owner, tenant):
    live = session_of(tenant)
    done = ended(tenant)
    body = signed_in(owner).get(url(tenant, "sessions"), {"status": "all"}).content.decode()
    assert url(tenant, "session-terminate", live.pk) in body
    assert url(tenant, "session-terminate", done.pk) not in body
    assert "Terminate all live sessions" in body
    assert body.count("data-confirm=") == 2  # the one live session, and all
