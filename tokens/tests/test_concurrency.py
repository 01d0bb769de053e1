"""Races on real PostgreSQL: the quota never overspends, duplicates never double-issue."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from audit.models import AuditEvent
from realtime_platform.errors import QuotaExceeded
from tenants.auth import api_key_authenticate
from tokens.asgi import shutdown_db_threads
from tokens.models import ClientSecret
from tokens.services import client_secret_issue
from tokens.tests.conftest import set_limits
from usage.models import Metric, UsageEvent
from usage.services import quota_used

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BODY = json.dumps({"session": {"type": "realtime", "instructions": "Race."}}).encode()


@pytest.fixture
def many_db_threads(settings):
    settings.ISSUANCE_DB_THREADS = 8
    shutdown_db_threads()
    yield
    shutdown_db_threads()


def post_concurrently(key: str, count: int, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    from realtime_platform.asgi import application

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/v1/realtime/client_secrets",
                            content=BODY,
                            headers={"Authorization": f"Bearer {key}", **(headers or {})},
                        )
                        for _ in range(count)
                    )
                )
            )

    return async_to_sync(run)()


def test_many_concurrent_clients_never_issue_more_than_the_daily_quota(tenant, api_key):
    """24 threads race 6 issuances each against a limit of 60: exactly 60 secrets exist after."""
    limit, threads, attempts = 60, 24, 6
    set_limits(tenant, secrets_per_day=limit)
    issued: list[int] = []
    refused: list[int] = []
    barrier = threading.Barrier(threads)

    def client() -> None:
        ok = no = 0
        try:
            principal = api_key_authenticate(api_key.plaintext)
            barrier.wait()
            for _ in range(attempts):
                try:
                    client_secret_issue(principal=principal, body=BODY)
                    ok += 1
                except QuotaExceeded:
                    no += 1
        finally:
            connection.close()
        issued.append(ok)
        refused.append(no)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sum(issued) == limit
    assert sum(refused) == threads * attempts - limit
    assert ClientSecret.objects.count() == limit
    assert UsageEvent.objects.filter(kind="secret_issued").count() == limit
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == limit
    assert AuditEvent.objects.filter(action="secret.issued").count() == limit


def test_concurrent_http_requests_through_the_fast_path_respect_the_quota(tenant, api_key, many_db_threads):
    set_limits(tenant, secrets_per_day=25)
    responses = post_concurrently(api_key.plaintext, 80)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 25
    assert statuses.count(429) == 55
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"insufficient_quota"}
    assert ClientSecret.objects.count() == 25
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 25


def test_100_concurrent_duplicates_issue_exactly_one_secret(tenant, api_key, many_db_threads):
    responses = post_concurrently(api_key.plaintext, 100, {"Idempotency-Key": "checkout-42"})
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 409}
    ok = [r for r in responses if r.status_code == 200]
    assert ok
    assert len({r.content for r in ok}) == 1  # every success is the same bytes
    assert all(
        r.json()["error"]["code"] == "idempotency_request_in_progress"
        for r in responses
        if r.status_code == 409
    )
    assert ClientSecret.objects.count() == 1
    assert quota_used(tenant=tenant, metric=Metric.SECRETS) == 1
    assert UsageEvent.objects.count() == 1
    assert AuditEvent.objects.filter(action="secret.issued").count() == 1
    # a late retry gets the same answer
    late = post_concurrently(api_key.plaintext, 1, {"Idempotency-Key": "checkout-42"})[0]
    assert late.content == ok[0].content
