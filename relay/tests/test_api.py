"""/api/v1/sessions: list, read, terminate (one or all), each scoped to the key's tenant."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from rest_framework.test import APIClient

from audit.models import AuditEvent
from conftest import make_key
from relay.core import GROUP_KEY, GROUP_SESSION, GROUP_TENANT, TERMINATE
from relay.models import RealtimeSession

pytestmark = pytest.mark.django_db


def live_session(tenant: Any, api_key: Any = None, **fields: Any) -> RealtimeSession:
    return RealtimeSession.objects.create(tenant=tenant, api_key=api_key, model="gpt-realtime", **fields)


class Listener:
    """A channel in a kill-switch group, standing in for the process that holds the socket."""

    def __init__(self, group: str) -> None:
        self.layer = get_channel_layer()
        self.group = group
        self.channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(group, self.channel)

    def message(self) -> dict[str, Any]:
        async def receive() -> dict[str, Any]:
            import asyncio

            return await asyncio.wait_for(self.layer.receive(self.channel), 2)

        return async_to_sync(receive)()

    def nothing(self) -> bool:
        async def empty() -> bool:
            import asyncio

            try:
                await asyncio.wait_for(self.layer.receive(self.channel), 0.2)
            except TimeoutError:
                return True
            return False

        return async_to_sync(empty)()


def test_lists_live_sessions_of_the_keys_tenant_only(
    key_client, tenant, other_tenant, api_key, django_assert_num_queries
):
    mine = live_session(tenant, api_key.api_key)
    also_mine = live_session(tenant, make_key(tenant, name="second").api_key)
    live_session(tenant, status=RealtimeSession.Status.ENDED, end_reason="client_closed")
    live_session(other_tenant)
    with django_assert_num_queries(
        3
    ):  # the key (tenant joined), its last_used_at, the sessions (keys joined)
        response = key_client.get("/api/v1/sessions")
    assert response.status_code == 200
    data = response.json()["data"]
    assert {s["id"] for s in data} == {mine.pk, also_mine.pk}
    assert {s["object"] for s in data} == {"relay.session"}
    assert api_key.api_key.prefix in {s["api_key_prefix"] for s in data}
    every = key_client.get("/api/v1/sessions?status=all").json()["data"]
    assert len(every) == 3


def test_bad_filter_is_an_openai_shaped_error(key_client):
    response = key_client.get("/api/v1/sessions?status=zombie")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"


def test_reads_one_session(key_client, tenant):
    session = live_session(tenant, frames_in=3)
    response = key_client.get(f"/api/v1/sessions/{session.pk}")
    assert response.status_code == 200
    assert response.json()["frames_in"] == 3


def test_other_tenants_session_is_not_found(key_client, other_tenant):
    theirs = live_session(other_tenant)
    response = key_client.get(f"/api/v1/sessions/{theirs.pk}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = key_client.post(f"/api/v1/sessions/{theirs.pk}/terminate")
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.status == RealtimeSession.Status.ACTIVE


def test_terminating_a_session_reaches_its_socket_after_commit(
    key_client, tenant, api_key, django_capture_on_commit_callbacks
):
    session = live_session(tenant, api_key.api_key)
    listener = Listener(GROUP_SESSION.format(session.pk))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = key_client.post(f"/api/v1/sessions/{session.pk}/terminate")
    assert response.status_code == 200
    assert len(callbacks) == 1
    assert listener.message() == {"type": TERMINATE, "reason": "terminated", "tenant_id": tenant.pk}
    audited = AuditEvent.objects.get(action="session.terminated")
    assert audited.target_id == session.pk
    assert audited.actor_id == str(api_key.api_key.pk)


def test_other_tenants_session_gets_no_message(key_client, other_tenant, django_capture_on_commit_callbacks):
    theirs = live_session(other_tenant)
    listener = Listener(GROUP_SESSION.format(theirs.pk))
    with django_capture_on_commit_callbacks(execute=True):
        key_client.post(f"/api/v1/sessions/{theirs.pk}/terminate")
    assert listener.nothing()


def test_read_only_key_cannot_terminate(api_client, tenant, read_only_key):
    session = live_session(tenant)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {read_only_key.plaintext}")
    response = api_client.post(f"/api/v1/sessions/{session.pk}/terminate")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


def test_terminate_all_for_the_tenant_or_one_key(
    key_client, tenant, api_key, django_capture_on_commit_callbacks
):
    live_session(tenant, api_key.api_key)
    live_session(tenant)
    everyone = Listener(GROUP_TENANT.format(tenant.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = key_client.post("/api/v1/sessions/terminate", {}, format="json")
    assert response.json() == {"object": "relay.session.termination", "terminated": 2}
    assert everyone.message()["reason"] == "terminated"
    one_key = Listener(GROUP_KEY.format(api_key.api_key.pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = key_client.post(
            "/api/v1/sessions/terminate", {"api_key_id": api_key.api_key.pk}, format="json"
        )
    assert response.json()["terminated"] == 1
    assert one_key.message()["tenant_id"] == tenant.pk


def test_terminate_all_with_another_tenants_key_is_not_found(key_client, other_tenant_key):
    response = key_client.post(
        "/api/v1/sessions/terminate", {"api_key_id": other_tenant_key.api_key.pk}, format="json"
    )
    assert response.status_code == 404


def test_needs_a_key(api_client: APIClient):
    response = api_client.get("/api/v1/sessions")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
