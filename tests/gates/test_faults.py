"""Fault matrix (issue 9, item 4): what a client sees when a dependency fails, and what is left.

Every cell injects one real fault into a live platform (daphne, the whole ASGI app, the
issuance fast path, the relay) and checks the same five properties:

1. the documented answer (README "What is enforced, and the errors you can get", "Close codes"):
   an OpenAI-shaped error with the documented status and code, `Retry-After` where documented,
   or an `error` event and the documented close code on the socket;
2. no traceback in any response body or socket frame;
3. no overspend: a failed issuance leaves no secret, no daily-quota debit, no Idempotency-Key,
   and a session that ended gives its concurrency slot back;
4. no lost audit rows: exactly the expected rows were added (`secret.failed`, `session.ended`,
   …) and the audit chain verifier reports every chain OK;
5. recovery: once the fault is gone, the next request or session succeeds.

Faults: OpenAI through the emulator's fault injection (`emulator.faults`) or real sockets
(a closed port, a listener that drops every connection); Redis is a redis-server of the test's
own that it kills and restarts (the shared 127.0.0.1:6379 is never touched); PostgreSQL
connections are killed with `pg_terminate_backend`, only the test database's backends and never
the test's own.

Run: `.venv/bin/pytest tests/gates/test_faults.py` (SQLite; the PostgreSQL cells skip), and with
the services `DATABASE_URL=postgres://… REDIS_URL=redis://… RTP_REQUIRE_SERVICES=1 …`. The Redis
cells need only the `redis-server` binary, not REDIS_URL, so they carry no `redis` marker: without
the binary they skip, unless RTP_REQUIRE_SERVICES=1 (CI), where that is a failure.

Seen to fail on purpose (each change reverted afterwards):

- Quota not given back on an upstream failure: in `tokens/services.py`,
  `client_secret_issue_abandon`, replace `quota_release(reservation=pending.reservation)` with
  `pass`. Every `test_upstream_issuance_fault[...]` cell fails with "(secrets, daily quota used,
  idempotency keys) kept by a failure: (0, 1, 0)".
- Failure not audited: in `client_secret_issue_upstream_failed`, drop the `_audit_failure(...)`
  call. `test_upstream_issuance_fault[openai-500]` (and the others) fail with
  `assert {} == {'secret.failed': 1}`.
- Rate limiter failing open: in `tokens/ratelimit.py`, `_count`, make the `except (RedisError,
  OSError)` branch `return {"count": 0, "limit": limit, "should_limit": False, "time_left": 60}`.
  `test_redis_down_issuance_fails_closed_fast_then_recovers` fails with `assert 200 == 503`.
- Pooled connections not checked (the bug this matrix found; fixed in settings.py): remove
  `DATABASES["default"]["CONN_HEALTH_CHECKS"] = True` from the pool branch of
  `realtime_platform/settings.py`. On PostgreSQL `test_postgres_lost_between_requests` and
  `test_postgres_lost_while_openai_answers` fail with `assert 503 == 200` (500 before the next
  fix), and `test_postgres_lost_mid_session` with `assert 'active' == ...ENDED` (the response's
  metering and the session's end were lost: "metering failed", "ending session failed").
- Database errors as bugs (the second fix): remove the `db.OperationalError | db.InterfaceError`
  branch of `realtime_platform.errors.as_api_error`. `test_postgres_lost_mid_issuance_transaction`
  fails with `assert 500 == 503`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from celery.signals import before_task_publish
from django.db import connection, transaction
from kombu.exceptions import OperationalError
from websockets.sync.client import connect

from audit.models import AuditEvent
from audit.verification import audit_verify_all
from conftest import make_key
from relay.core import CLOSE_TERMINATED, CLOSE_UPSTREAM_FAILED, EndReason
from relay.tests.test_sdk_e2e import ended, read_until_closed, relay_tasks_left
from tenants.models import Scope
from tests.gates.redis_process import RedisProcess, redis_server_or_skip
from tokens.models import ClientSecret, IdempotencyRecord
from tokens.tests.conftest import _closed_breaker, set_policy  # noqa: F401  (autouse: the breaker starts closed)
from upstream.emulator.faults import HttpFault
from usage.models import Metric, QuotaCounter, UsageEvent
from usage.services import quota_used

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {
    "expires_after": {"anchor": "created_at", "seconds": 120},
    "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
}
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")


@pytest.fixture
def platform(live_server_asgi: Any, emulator: Any, settings: Any) -> Iterator[Any]:
    """The whole platform on daphne, OpenAI being the live emulator; quick retries and timeouts."""
    settings.UPSTREAM_MAX_RETRIES = 1
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    settings.UPSTREAM_CONNECT_TIMEOUT = 0.5
    settings.RELAY_HEARTBEAT_SECONDS = 0.3
    yield live_server_asgi
    emulator.faults.clear()


# --- what every cell checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Books:
    """What a fault must not change unexpectedly: secrets, the daily and concurrent quotas, audit."""

    secrets: int
    secrets_quota: int
    session_slots: int
    idempotency_keys: int
    audit: dict[str, int]

    @classmethod
    def of(cls, tenant: Any) -> Books:
        audit = dict(Counter(AuditEvent.objects.values_list("action", flat=True)))
        return cls(
            secrets=ClientSecret.objects.count(),
            secrets_quota=quota_used(tenant=tenant, metric=Metric.SECRETS),
            session_slots=quota_used(tenant=tenant, metric=Metric.SESSIONS),
            idempotency_keys=IdempotencyRecord.objects.count(),
            audit=audit,
        )

    def added_audit(self, before: Books) -> dict[str, int]:
        return {a: n - before.audit.get(a, 0) for a, n in self.audit.items() if n != before.audit.get(a, 0)}


def assert_audit_chains_ok() -> None:
    reports = audit_verify_all()
    assert reports
    assert all(report.ok for report in reports), [r for r in reports if not r.ok]


def assert_no_traceback(text: str | bytes) -> None:
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    for marker in TRACEBACK_MARKERS:
        assert marker not in body, body[:2000]


def assert_openai_error(response: httpx.Response, status: int, code: str, *, retry_after: bool) -> None:
    assert_no_traceback(response.content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["message"]
    if retry_after:
        assert int(response.headers["Retry-After"]) >= 1
    assert response.headers.get("x-request-id")


def issue(server: Any, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/v1/realtime/client_secrets",
        json=BODY,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


# --- OpenAI faults, upstream-kind issuance ------------------------------------------------------


class DroppingListener:
    """A TCP listener that accepts every connection and closes it at once: a dropped socket."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(1024)
            conn.close()

    def close(self) -> None:
        self.sock.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


@dataclass(frozen=True)
class IssuanceFault:
    inject: Callable[[Any, Any], Callable[[], None] | None]  # (emulator, settings) → undo
    status: int
    code: str
    retry_after: bool


def _emulator_fault(call: Callable[[Any], None]) -> Callable[[Any, Any], None]:
    def inject(emulator: Any, settings: Any) -> None:
        call(emulator.faults)

    return inject


def _upstream_at(port_for: Callable[[], tuple[int, Callable[[], None]]]) -> Any:
    def inject(emulator: Any, settings: Any) -> Callable[[], None]:
        port, close = port_for()
        settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"

        def undo() -> None:
            close()
            settings.OPENAI_BASE_URL = emulator.base_url

        return undo

    return inject


def _dropping() -> tuple[int, Callable[[], None]]:
    listener = DroppingListener()
    return listener.port, listener.close


ISSUANCE_FAULTS = {
    # a long Retry-After is handed back rather than waited out (UPSTREAM_RETRY_MAX_WAIT)
    "openai-429": IssuanceFault(
        _emulator_fault(
            lambda f: f.next_http(429, retry_after=30, code="rate_limit_exceeded", type="requests")
        ),
        429,
        "rate_limit_exceeded",
        retry_after=True,
    ),
    "openai-500": IssuanceFault(
        _emulator_fault(lambda f: f.next_http(500, times=2)), 502, "upstream_error", retry_after=True
    ),
    "openai-503": IssuanceFault(
        _emulator_fault(lambda f: f.next_http(503, times=2)), 502, "upstream_error", retry_after=True
    ),
    "openai-timeout": IssuanceFault(
        _emulator_fault(lambda f: f.slow(2.0, times=2)), 504, "upstream_timeout", retry_after=True
    ),
    "openai-malformed-body": IssuanceFault(
        _emulator_fault(lambda f: f.malformed_body(times=2)), 502, "upstream_error", retry_after=True
    ),
    "openai-connection-refused": IssuanceFault(
        _upstream_at(lambda: (closed_port(), lambda: None)), 502, "upstream_unavailable", retry_after=True
    ),
    "openai-socket-dropped": IssuanceFault(
        _upstream_at(_dropping), 502, "upstream_unavailable", retry_after=True
    ),
}


@pytest.mark.parametrize("fault", ISSUANCE_FAULTS.values(), ids=ISSUANCE_FAULTS.keys())
def test_upstream_issuance_fault(fault: IssuanceFault, platform, emulator, settings, tenant, api_key):
    set_policy(tenant, secret_kind="upstream")
    before = Books.of(tenant)
    undo = fault.inject(emulator, settings)

    response = issue(platform, api_key.plaintext, **{"Idempotency-Key": "order-1"})

    assert_openai_error(response, fault.status, fault.code, retry_after=fault.retry_after)
    after = Books.of(tenant)
    # nothing issued, nothing kept: the daily quota and the Idempotency-Key were given back
    kept = (after.secrets, after.secrets_quota, after.idempotency_keys)
    assert kept == (0, 0, 0), f"(secrets, daily quota used, idempotency keys) kept by a failure: {kept}"
    assert after.added_audit(before) == {"secret.failed": 1}
    failed = AuditEvent.objects.get(action="secret.failed")
    assert failed.details["reason"] == "upstream"
    assert failed.details["status"] == fault.status
    assert_audit_chains_ok()

    if undo is not None:
        undo()
    emulator.faults.clear()
    again = issue(platform, api_key.plaintext, **{"Idempotency-Key": "order-1"})  # same key: it was released
    assert again.status_code == 200, again.text
    assert again.json()["value"].startswith("ek_")
    assert "Idempotent-Replayed" not in again.headers
    recovered = Books.of(tenant)
    assert (recovered.secrets, recovered.secrets_quota) == (1, 1)
    assert recovered.added_audit(after) == {"secret.issued": 1}
    assert_audit_chains_ok()


# --- OpenAI faults, relayed sessions -------------------------------------------------------------


def open_session(server: Any, key: str) -> Any:
    return connect(
        f"{server.ws_url}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=10,
    )


def talk(ws: Any) -> list[dict[str, Any]]:
    """One text turn; the events up to its response.done."""
    ws.send(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
            }
        )
    )
    ws.send('{"type":"response.create","response":{"output_modalities":["text"]}}')
    events = []
    while True:
        raw = ws.recv(timeout=10)
        assert_no_traceback(raw)
        events.append(json.loads(raw))
        if events[-1]["type"] == "response.done":
            return events


@dataclass(frozen=True)
class RelayFault:
    inject: Callable[[Any], None]
    error_code: str
    end_reason: str


RELAY_FAULTS = {
    "openai-rejects-socket": RelayFault(
        lambda f: f.reject_socket(), "upstream_unavailable", EndReason.UPSTREAM_REFUSED
    ),
    "openai-socket-timeout": RelayFault(
        lambda f: f.slow_socket(0.0, accept_delay=2.0), "upstream_timeout", EndReason.UPSTREAM_REFUSED
    ),
    "openai-drops-socket": RelayFault(
        lambda f: f.drop_socket_after(3), "upstream_disconnected", EndReason.UPSTREAM_LOST
    ),
}


@pytest.mark.parametrize("fault", RELAY_FAULTS.values(), ids=RELAY_FAULTS.keys())
def test_relay_session_fault(fault: RelayFault, platform, emulator, settings, tenant):
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT]).plaintext
    before = Books.of(tenant)
    fault.inject(emulator.faults)

    with open_session(platform, key) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):  # the server may have closed already
            ws.send('{"type":"response.create","response":{"output_modalities":["text"]}}')
        events, code, _ = read_until_closed(ws)
    assert_no_traceback(json.dumps(events))
    assert code == CLOSE_UPSTREAM_FAILED
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == fault.error_code
    session = ended(tenant)
    assert session.end_reason == fault.end_reason
    assert session.close_code == CLOSE_UPSTREAM_FAILED
    after = Books.of(tenant)
    assert after.session_slots == 0  # the concurrency slot came back
    assert after.added_audit(before) == {"session.opened": 1, "session.ended": 1}
    assert AuditEvent.objects.get(action="session.ended").details["reason"] == fault.end_reason
    assert_audit_chains_ok()
    assert relay_tasks_left() == []

    emulator.faults.clear()
    with open_session(platform, key) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        assert talk(ws)[-1]["response"]["status"] == "completed"
    assert ended(tenant).end_reason == EndReason.CLIENT_CLOSED
    assert quota_used(tenant=tenant, metric=Metric.SESSIONS) == 0
    assert_audit_chains_ok()


# --- Redis stopped and restarted -------------------------------------------------------------------


@pytest.fixture
def own_redis(settings: Any) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, and the cache (rate limits), the channel layer (kill
    switch) and the Celery broker pointed at it, as REDIS_URL would (realtime_platform/settings.py)."""
    redis = RedisProcess(redis_server_or_skip())
    redis.start()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis.url,
            "KEY_PREFIX": "rtp",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis.url], "prefix": "rtp:channels", "capacity": 1000, "expiry": 30},
        }
    }
    settings.CELERY_BROKER_URL = redis.url
    settings.RATE_LIMIT_BREAKER_SECONDS = 1
    try:
        yield redis
    finally:
        redis.close()


def redis_keys(redis: RedisProcess) -> int:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url, socket_timeout=2)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def test_redis_down_issuance_fails_closed_fast_then_recovers(platform, own_redis, tenant, api_key):
    assert issue(platform, api_key.plaintext).status_code == 200
    assert redis_keys(own_redis) > 0  # the rate-limit counters really live in this Redis
    before = Books.of(tenant)

    own_redis.stop()
    started = time.monotonic()
    refused = [issue(platform, api_key.plaintext) for _ in range(3)]
    assert time.monotonic() - started < 2.0  # fast: no connect timeouts waited out
    for response in refused:
        assert_openai_error(response, 503, "rate_limiter_unavailable", retry_after=True)
        assert response.json()["error"]["type"] == "server_error"
    after = Books.of(tenant)
    assert (after.secrets, after.secrets_quota) == (before.secrets, before.secrets_quota)  # nothing issued
    assert after.audit == before.audit  # refusals at the door are not audited (README), none lost
    assert_audit_chains_ok()

    own_redis.start()  # back, empty
    deadline = time.monotonic() + 5
    while (response := issue(platform, api_key.plaintext)).status_code == 503:
        assert_openai_error(response, 503, "rate_limiter_unavailable", retry_after=True)
        assert time.monotonic() < deadline, "issuance did not recover after the breaker interval"
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    recovered = Books.of(tenant)
    assert (recovered.secrets, recovered.secrets_quota) == (before.secrets + 1, before.secrets_quota + 1)
    assert recovered.added_audit(after) == {"secret.issued": 1}
    assert_audit_chains_ok()


def revoke(server: Any, admin_key: str, key_id: int) -> httpx.Response:
    return httpx.post(
        f"{server.http_url}/api/v1/api_keys/{key_id}/revoke",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=30,
    )


def closes_within(ws: Any, seconds: float) -> tuple[list[dict[str, Any]], int | None]:
    started = time.monotonic()
    events, code, closed_at = read_until_closed(ws)
    assert closed_at - started < seconds, f"closed after {closed_at - started:.1f}s"
    assert_no_traceback(json.dumps(events))
    return events, code


def test_redis_down_kill_switch_degrades_to_the_heartbeat_and_sessions_live_on(
    platform, own_redis, settings, tenant, api_key
):
    first = make_key(tenant, name="first", scopes=[Scope.REALTIME_CONNECT])
    second = make_key(tenant, name="second", scopes=[Scope.REALTIME_CONNECT])
    before = Books.of(tenant)

    with open_session(platform, first.plaintext) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        own_redis.stop()
        time.sleep(0.5)  # the session's kill-switch listener is now failing against a dead Redis
        assert talk(ws)[-1]["response"]["status"] == "completed"  # the live session is unharmed
        # revoking still works: the control message cannot be sent (logged), the heartbeat
        # (RELAY_HEARTBEAT_SECONDS, 0.3 s here) finds the revoked key and closes the session
        response = revoke(platform, api_key.plaintext, first.api_key.pk)
        assert response.status_code == 200, response.text
        events, code = closes_within(ws, 5)
    assert code == CLOSE_TERMINATED
    assert events[-1]["error"]["code"] == "session_terminated"
    assert ended(tenant).end_reason == EndReason.KEY_REVOKED

    own_redis.start()
    settings.RELAY_HEARTBEAT_SECONDS = 60  # from here on only the channel layer can close it quickly
    with open_session(platform, second.plaintext) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        response = revoke(platform, api_key.plaintext, second.api_key.pk)
        assert response.status_code == 200, response.text
        _, code = closes_within(ws, 2)
    assert code == CLOSE_TERMINATED
    assert ended(tenant).end_reason == EndReason.KEY_REVOKED

    after = Books.of(tenant)
    assert after.session_slots == 0
    assert after.added_audit(before) == {"session.opened": 2, "session.ended": 2, "key.revoked": 2}
    assert_audit_chains_ok()
    assert relay_tasks_left() == []


def test_redis_down_broker_no_request_enqueues_so_none_fails(platform, own_redis, tenant, api_key):
    """No request path enqueues a Celery task (only beat does: README "Background jobs"), so a dead
    broker cannot turn a request into a 500. The publish hook below is what a request that did
    enqueue would trip; it is shown to catch a real publish, against the dead and the live broker."""
    from realtime_platform.celery import app
    from tokens.tasks import client_secret_expire_sweep

    doomed = make_key(tenant, name="doomed", scopes=[Scope.REALTIME_CONNECT])
    published: list[str] = []

    def record(sender: Any = None, **kwargs: Any) -> None:
        published.append(str(sender))

    before_task_publish.connect(record, weak=False)
    try:
        own_redis.stop()
        before = Books.of(tenant)
        requests = [
            revoke(platform, api_key.plaintext, doomed.api_key.pk),
            httpx.post(
                f"{platform.http_url}/api/v1/sessions/terminate",
                json={},
                headers={"Authorization": f"Bearer {api_key.plaintext}"},
                timeout=30,
            ),
            httpx.get(
                f"{platform.http_url}/api/v1/client_secrets",
                headers={"Authorization": f"Bearer {api_key.plaintext}"},
                timeout=30,
            ),
        ]
        for response in requests:
            assert_no_traceback(response.content)
            assert response.status_code == 200, response.text
        assert published == []
        assert Books.of(tenant).added_audit(before) == {"key.revoked": 1, "session.terminated": 1}
        assert_audit_chains_ok()

        once = {"max_retries": 0}  # kombu would otherwise retry connecting for about 6 s
        with (
            pytest.raises(OperationalError, match="Connection refused"),
            app.connection_for_write(own_redis.url, transport_options=once) as conn,
        ):
            client_secret_expire_sweep.apply_async(connection=conn, retry=False)
        assert published == ["tokens.tasks.client_secret_expire_sweep"]

        own_redis.start()
        with app.connection_for_write(own_redis.url, transport_options=once) as conn:
            client_secret_expire_sweep.apply_async(connection=conn, retry=False)
        assert redis_keys(own_redis) > 0  # the message is queued in the restarted broker
    finally:
        before_task_publish.disconnect(record)


# --- PostgreSQL connections lost --------------------------------------------------------------------


def terminate_backends() -> int:
    """Kill every server-side connection to the test database except this thread's own (the
    controlling one): the server processes behind the platform's pooled connections die, the
    server itself stays up. Only the test database (its name starts with test_) is touched."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        [database] = cursor.fetchone()
        assert database.startswith("test_"), database
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        [killed] = cursor.fetchone()
    return int(killed)


def grow_pool(size: int) -> None:
    """Leave `size` idle connections in the platform's pool, as a burst of requests does."""
    pool = connection.pool
    held = [pool.getconn() for _ in range(size)]
    for conn in held:
        pool.putconn(conn)


def backends_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        [waiting] = cursor.fetchone()
    return int(waiting)


@pytest.mark.postgres
def test_postgres_lost_between_requests(platform, tenant, api_key):
    """The pool holds connections whose server processes died: each is tested as it leaves the
    pool and replaced, so no request sees the loss."""
    assert issue(platform, api_key.plaintext).status_code == 200  # the pool now holds connections
    grow_pool(16)  # as a burst of traffic leaves it: psycopg tries dead ones one by one, with backoff
    before = Books.of(tenant)
    assert terminate_backends() >= 16

    responses = [issue(platform, api_key.plaintext) for _ in range(3)]

    for response in responses:
        assert_no_traceback(response.content)
        assert response.status_code == 200, response.text
    after = Books.of(tenant)
    assert (after.secrets, after.secrets_quota) == (before.secrets + 3, before.secrets_quota + 3)
    assert after.added_audit(before) == {"secret.issued": 3}
    assert_audit_chains_ok()


@pytest.mark.postgres
def test_postgres_lost_mid_issuance_transaction(platform, tenant, api_key):
    """The connection dies inside the issuing transaction (the secret and its audit row are
    written, the request waits for the quota row, which this test holds locked): the client gets
    a clean 503, the server rolled everything back, and the next request succeeds."""
    assert issue(platform, api_key.plaintext).status_code == 200  # today's quota row exists
    before = Books.of(tenant)
    box: list[httpx.Response] = []
    with transaction.atomic():
        list(QuotaCounter.objects.select_for_update().filter(tenant=tenant, metric=Metric.SECRETS))
        worker = threading.Thread(target=lambda: box.append(issue(platform, api_key.plaintext)))
        worker.start()
        deadline = time.monotonic() + 10
        while backends_waiting_on_a_lock() == 0:
            assert time.monotonic() < deadline, "the request never reached the quota row"
            time.sleep(0.02)
        assert terminate_backends() >= 1
    worker.join(30)
    [response] = box

    assert_openai_error(response, 503, "database_unavailable", retry_after=True)
    after = Books.of(tenant)
    assert (after.secrets, after.secrets_quota, after.audit) == (
        before.secrets,
        before.secrets_quota,
        before.audit,
    )
    assert_audit_chains_ok()
    assert issue(platform, api_key.plaintext).status_code == 200
    recovered = Books.of(tenant)
    assert (recovered.secrets, recovered.secrets_quota) == (before.secrets + 1, before.secrets_quota + 1)
    assert recovered.added_audit(after) == {"secret.issued": 1}
    assert_audit_chains_ok()


@pytest.mark.postgres
def test_postgres_lost_while_openai_answers(platform, emulator, tenant, api_key):
    """Upstream kind: the quota is reserved, then the connections die while OpenAI is answering;
    recording the secret afterwards gets a fresh connection from the pool."""
    set_policy(tenant, secret_kind="upstream")
    assert issue(platform, api_key.plaintext).status_code == 200
    before = Books.of(tenant)
    emulator.faults.add_http(HttpFault(delay=0.4))  # shorter than the read timeout: no retry
    box: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: box.append(issue(platform, api_key.plaintext)))
    worker.start()
    deadline = time.monotonic() + 10
    while not emulator.requests[1:]:
        assert time.monotonic() < deadline, "the request never reached OpenAI"
        time.sleep(0.02)
    assert terminate_backends() >= 1
    worker.join(30)
    [response] = box

    assert_no_traceback(response.content)
    assert response.status_code == 200, response.text
    after = Books.of(tenant)
    assert (after.secrets, after.secrets_quota) == (before.secrets + 1, before.secrets_quota + 1)
    assert after.added_audit(before) == {"secret.issued": 1}
    assert_audit_chains_ok()
    assert issue(platform, api_key.plaintext).status_code == 200


@pytest.mark.postgres
def test_postgres_lost_mid_session(platform, tenant):
    """The relay's connections die under a live session: the next metering, heartbeat and the
    end of the session get fresh connections, so nothing is lost and the slot comes back."""
    key = make_key(tenant, scopes=[Scope.REALTIME_CONNECT]).plaintext
    before = Books.of(tenant)
    with open_session(platform, key) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        assert talk(ws)[-1]["response"]["status"] == "completed"
        assert terminate_backends() >= 1
        time.sleep(0.7)  # heartbeats (every 0.3 s here) on the replaced connections
        done = talk(ws)[-1]
        assert done["response"]["status"] == "completed"
    session = ended(tenant)
    assert session.end_reason == EndReason.CLIENT_CLOSED
    assert UsageEvent.objects.filter(natural_key=f"resp:{session.pk}:{done['response']['id']}").exists()
    assert session.output_tokens > 0
    after = Books.of(tenant)
    assert after.session_slots == 0
    assert after.added_audit(before) == {"session.opened": 1, "session.ended": 1}
    assert_audit_chains_ok()
