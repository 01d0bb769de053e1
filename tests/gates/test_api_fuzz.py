"""API fuzzing gate (issue 9, item 1): schemathesis against the platform's own OpenAPI schema.

What runs: the schema is fetched from `/api/schema/` (drf-spectacular, exactly what clients get)
through the WSGI application, in-process. `schema.parametrize()` makes one test per operation
(13 today: every operation under /api/v1/ and /v1/); for each, schemathesis runs its examples,
coverage and fuzzing phases with positive AND negative (schema-violating) data.
`test_upstream_issuance_fuzz` fuzzes issuance again with the tenant's policy set to `upstream`
kind, so each valid body goes to OpenAI, here the emulator (`emulator` fixture, never a network;
the test asserts the emulator was called and minted `ek_` secrets). `test_stateful_workflows`
runs schemathesis' state machine along the links it infers from the schema (a list's ids into
retrieve, revoke and terminate), so those operations also meet real objects.

Checks: all of schemathesis', at their defaults: not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance, response_headers_conformance,
positive_data_acceptance, negative_data_rejection, missing_required_header, unsupported_method,
ignored_auth (each request is re-sent without its key and must be refused), allow_header_conformance,
and in the stateful test use_after_free and ensure_resource_availability. Requests carry a real API
key (all scopes) of a real tenant, set through schemathesis' auth hook so that the cases which
deliberately drop or break `Authorization` really go without it.

Reproducible: a fixed seed (schemathesis derives each operation's from it), derandomized
generation, no example database. `RTP_FUZZ_EXAMPLES` sets the fuzzing phase's examples per
operation (and the stateful scenarios): 25 by default (`make test`), 500 with `make fuzz`. The
coverage phase is exhaustive by construction and does not depend on it (1,301 cases for the
issuance body alone).

Each example runs inside a savepoint rolled back after it, so every example meets the same
database (the tenant, two keys, secrets of both kinds, a live and an ended session): an example
that revokes the key the fuzzer authenticates with cannot blind the ones after it, and a failure
replays from its seed alone. Rate limits: the fixture lifts the plan's request-rate and
daily-secret limits instead of disabling a check, so a long run never answers 429 for volume.

Configured checks, and why:
- `GET /api/v1/client_secrets`: positive_data_acceptance also accepts 400. `after` is a pagination
  cursor; a well-formed id that is not one of the tenant's secrets is refused with 400
  `invalid_value` (param `after`) by design.
- `test_upstream_issuance_fuzz`: positive_data_acceptance also accepts 400. OpenAI checks more
  than the published request schema can say (known model and voice names, no null where it wants
  an object) and the platform relays its 400 unchanged. The coverage phase is off there (the relay
  run walks the same body's coverage cases; what differs is the call to OpenAI).
- Bodies are sent with whole numbers as integers (`map_body`): JSON Schema counts 600.0 as an
  integer, OpenAI refuses it for an integer field, and so does the platform, which checks JSON
  types exactly as OpenAI does.

Bugs this gate found, fixed in the app (own commits): `GET /api/v1/api_keys` and
`GET /api/v1/sessions` documented as bare arrays; `POST /api/v1/sessions/terminate` answering an
undocumented 404; blank query values (`?status=`) silently taken as absent; a 500 on
`GET /api/v1/client_secrets?api_key=<integer above 2**63-1>` (SQLite integer overflow); the
Idempotency-Key header's accepted values, an audio format's required `type` and an MCP tool's
"exactly one server" rule missing from the schema.

Seen to fail when broken on purpose (and reverted):
- `relay/apis.py`: make `SessionDetailApi.get` just `return Response(status=500)`. Then
  `.venv/bin/pytest tests/gates/test_api_fuzz.py` fails `test_api[GET /api/v1/sessions/{session_id}]`
  with "ST101 Server error", "ST104 Missing Content-Type header" and "ST109 JSON deserialization
  error", and a curl line to reproduce.
- `tokens/apis.py`: drop `max_value=2**63 - 1` from `ClientSecretListApi.FilterSerializer.api_key`.
  `RTP_FUZZ_EXAMPLES=150 .venv/bin/pytest tests/gates/test_api_fuzz.py -k client_secrets` fails
  `test_api[GET /api/v1/client_secrets]` with "ST101 Server error" (the default 25 examples do not
  reach that integer; `make fuzz` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, settings

from conftest import make_key
from relay.models import RealtimeSession
from tenants.models import SessionPolicy
from tokens.models import ClientSecret
from tokens.tests.factories import ClientSecretFactory

EXAMPLES = int(os.environ.get("RTP_FUZZ_EXAMPLES", "25"))
SEED = 20261126
POSITIVE_OR_400 = ["2xx", "400", "401", "403", "404", "409", "429"]

# The examples phase builds some cases at collection time, before any key exists, so the auth hook
# writes this placeholder and each test puts its real key in its place just before the call.
KEY_PLACEHOLDER = "rtp_sk_fuzz-key-placeholder"


class TenantKeyAuth:
    """`Authorization: Bearer <key>`. Set through the auth hook (not as extra headers of the call),
    so schemathesis leaves it off the cases that test a missing or broken Authorization header,
    and its ignored_auth check knows what to remove."""

    def get(self, case: Any, ctx: Any) -> str:
        return KEY_PLACEHOLDER

    def set(self, case: Any, data: str, ctx: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def map_body(context: Any, body: Any) -> Any:
    """Whole numbers as integers (`600`, never `600.0`). JSON Schema counts 600.0 as an integer and
    schemathesis sends it as one, but OpenAI refuses it for an integer field (`invalid_type`) and
    the platform, which checks JSON types exactly as OpenAI does, refuses it too: right for both,
    and something an OpenAPI schema cannot express."""
    if isinstance(body, float) and body.is_integer() and abs(body) <= 2**53:
        return int(body)
    if isinstance(body, dict):
        return {key: map_body(context, value) for key, value in body.items()}
    if isinstance(body, list):
        return [map_body(context, value) for value in body]
    return body


def load_schema(*, operations: list[dict[str, Any]], phases: dict[str, Any] | None = None) -> Any:
    """The schema as served at /api/schema/, with the fuzzing settings and per-operation check
    settings (`[[operations]]` of schemathesis.toml)."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",  # positive and negative data
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "operations": operations,
            "phases": phases or {},
        }
    )
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application(), config=config)
    loaded.auth(refresh_interval=None)(TenantKeyAuth)
    loaded.hook(map_body)
    return loaded


schema = load_schema(
    operations=[
        {
            # `after` names a secret; an unknown one is a 400 by design (see the docstring)
            "include-operation-id": "client_secrets_list",
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_OR_400}},
        }
    ]
)


@pytest.fixture
def wsgi_keeps_test_connection() -> Iterator[None]:
    """What Django's test client does around each request: schemathesis calls the WSGI application
    directly, and at the end of each request Django would close the database connection, which is
    in the middle of the test's transaction (on PostgreSQL the next query then fails)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_tenant(tenant: Any, emulator: Any, wsgi_keeps_test_connection: None) -> Any:
    """Alice's tenant, unlimited request rate and daily secrets, with a key of every scope, a
    second key, secrets of both kinds and a live and an ended relayed session to list and read."""
    plan = tenant.plan
    plan.requests_per_minute = None
    plan.secrets_per_day = None
    plan.save(update_fields=["requests_per_minute", "secrets_per_day"])
    key = make_key(tenant, name="fuzzer")
    other = make_key(tenant, name="second key")
    for kind in ClientSecret.Kind.values:
        ClientSecretFactory(tenant=tenant, api_key=key.api_key, kind=kind)
    for status in (RealtimeSession.Status.ACTIVE, RealtimeSession.Status.ENDED):
        RealtimeSession.objects.create(
            tenant=tenant, api_key=other.api_key, model="gpt-realtime", status=status
        )
    tenant.fuzz_key = key.plaintext
    return tenant


def _use_key(case: Any, key: str) -> None:
    if case.headers and case.headers.get("Authorization") == f"Bearer {KEY_PLACEHOLDER}":
        case.headers["Authorization"] = f"Bearer {key}"


def _call_and_validate(case: Any, key: str) -> None:
    _use_key(case, key)
    with transaction.atomic():  # rolled back: every example meets the same database
        case.call_and_validate()
        transaction.set_rollback(True)


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # state is reset per example
def test_api(case: Any, fuzz_tenant: Any) -> None:
    _call_and_validate(case, fuzz_tenant.fuzz_key)


# OpenAI (the emulator) checks more than the published request schema can say (known model and
# voice names, no null where it wants an object) and the platform relays its 400 unchanged, so here
# a schema-valid body may get a 400. That the emulator minted `ek_` secrets is asserted instead.
# (exclude, not include: schemathesis ORs includes with its own match-everything filter)
upstream_issuance = load_schema(
    operations=[
        {
            "include-operation-id": "realtime_client_secrets_create",
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_OR_400}},
        }
    ],
    # test_api already walks this body's coverage cases (relay kind); here what differs is the
    # call to OpenAI, which the examples and fuzzing phases reach
    phases={"coverage": {"enabled": False}},
).exclude(operation_id_regex="^(?!realtime_client_secrets_create$)")


@pytest.fixture
def upstream_tenant(fuzz_tenant: Any, emulator: Any) -> Iterator[Any]:
    SessionPolicy.objects.filter(tenant=fuzz_tenant).update(secret_kind=SessionPolicy.SecretKind.UPSTREAM)
    yield fuzz_tenant
    # the fuzz reached OpenAI's side (the emulator), and valid bodies became `ek_` secrets there
    assert any(request.path.endswith("/realtime/client_secrets") for request in emulator.requests)
    assert emulator.secrets


@upstream_issuance.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_upstream_issuance_fuzz(case: Any, upstream_tenant: Any) -> None:
    """Issuance of `upstream` secrets: the platform calls OpenAI (the emulator) for each valid body."""
    _call_and_validate(case, upstream_tenant.fuzz_key)


class ApiWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Sequences along the links schemathesis infers from the schema (a list's ids into retrieve
    and revoke, a secret's api_key_id into the key's endpoints, …), so the retrieve and revoke
    operations meet real objects and use_after_free / ensure_resource_availability have steps to
    check. Each scenario runs in a savepoint rolled back at its end."""

    key = ""

    def setup(self) -> None:
        self._atomic = transaction.atomic()
        self._atomic.__enter__()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    def before_call(self, case: Any) -> None:
        _use_key(case, self.key)


def test_stateful_workflows(fuzz_tenant: Any) -> None:
    ApiWorkflow.key = fuzz_tenant.fuzz_key
    ApiWorkflow.run(
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=10,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
