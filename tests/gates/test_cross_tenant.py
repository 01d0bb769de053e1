"""Cross-tenant matrix (issue 9, item 3): every route that names an object, tried on another
tenant's object by every kind of principal: 404, exactly as for a missing id, and nothing changes.

Generated, not listed by hand:
- console pages: every URL pattern under /console/ whose route takes a parameter, found by walking
  Django's resolver (`get_resolver()`), with the methods its `console_view` guard accepts;
- API operations: every operation of the OpenAPI schema (drf-spectacular, as `/api/schema/` serves
  it) with a path parameter; `test_url_conf_and_schema_agree` checks that the URL conf's API routes
  with a parameter (under /api/ and /v1/) are exactly those, so neither source can drop one.
Django's admin (/admin/) is left out on purpose: it is for the platform's operators (staff
superusers), not for tenants, and has no tenant scoping to test.

Each parameter is filled from `TARGETS`: the other tenant's object, the requester's own object
and a value nothing has. A new route whose parameter `TARGETS` does not know makes
`test_every_object_route_is_in_the_matrix` fail, saying what to add: new endpoints join the matrix
(or break the build) automatically.

Cases (each its own test id), tenant A's principals against tenant B:
- console, as A's owner, admin, compliance and viewer, GET and every mutating method the page
  accepts: "foreign-tenant" (B's slug, and B's object where the route takes one) answers the 404
  page byte for byte like an unknown slug; "foreign-id" (A's slug, B's object) like an unknown id;
- API, with A's keys holding each single scope and all scopes: B's object id answers what a
  missing id answers (404, OpenAI-shaped; 403 for a key without the operation's scope).
In every case every row of tenant B (all tenant-owned tables) is unchanged afterwards, and, so the
case cannot pass vacuously, the same request on A's own object is not a 404 whenever the role or
scope allows it. The data is built once per module (in a transaction rolled back at the end) and
every case runs in a savepoint of its own.

Seen to fail when broken on purpose (and reverted):
- `tenants/selectors.py`, `api_key_get`: drop `tenant=tenant` from the filter. Fails
  `test_api_foreign_object[api_keys_retrieve-GET-manage:read]` and `[...-GET-all]`: "B's object
  answered 200 (a missing one answers 404); B's object and a missing one do not look the same",
  and `[api_keys_revoke-POST-manage:write]`, `[...-POST-all]`, which also report "tenant B's rows
  changed: tenants.ApiKey, audit.AuditChainHead, audit.AuditEvent".
- `relay/console_views.py`, `session_terminate`: look the session up with
  `RealtimeSession.objects.filter(pk=session_id).first()` instead of `realtime_session_get(...)`.
  Fails `test_console_foreign_object[console:session-terminate-POST-foreign-id-owner]` (and
  `-admin`): "B's object answered 302 (a missing one answers 404); tenant B's rows changed:
  audit.AuditChainHead, audit.AuditEvent; not the console's 404 page; ...".
- Add `path("things/<int:thing_id>/", views.alerts, name="thing")` to `usage/console_urls.py`:
  `test_every_object_route_is_in_the_matrix` fails with "console:thing
  (console/<slug:tenant_slug>/usage/things/<int:thing_id>/) takes 'thing_id', which the
  cross-tenant matrix cannot fill: add an entry for it to TARGETS in
  tests/gates/test_cross_tenant.py (...)".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from django.apps import apps
from django.db import models, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator

from audit.selectors import audit_chain_head
from audit.tests.conftest import record_many
from conftest import make_key
from relay.models import RealtimeSession
from tenants.models import ALL_SCOPES, Membership, Role, Scope, Tenant
from tenants.tests.factories import MembershipFactory, TenantFactory, UserFactory
from tenants.tests.test_console_permissions import PAGES
from tokens.models import ClientSecret
from tokens.tests.factories import ClientSecretFactory

ROOTS = ("api/", "v1/", "console/")
EXCLUDED = ("admin/",)  # the operators' Django admin: staff superusers only, nothing tenant-scoped
ROLES = [Role.OWNER, Role.ADMIN, Role.COMPLIANCE, Role.VIEWER]
SCOPE_SETS: dict[str, tuple[str, ...]] = {**{scope: (scope,) for scope in Scope.values}, "all": ALL_SCOPES}
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
MISSING_SLUG = "no-such-tenant"


# --- the world: tenant A (the requesters) and tenant B (the targets) ----------------------------


@dataclass
class Side:
    tenant: Tenant
    key: Any  # an ApiKey other than the ones the API cases authenticate with
    member: Membership  # a viewer a manager may change or remove
    secret: ClientSecret
    session: RealtimeSession
    seq: int  # an audit event (B's: one A's chain has not reached)


@dataclass
class World:
    a: Side
    b: Side
    clients: dict[str, Client]  # A's members by role, signed in
    api_keys: dict[str, str]  # A's keys by scope set: plaintext


def _side(slug: str, *, events: int) -> Side:
    tenant = TenantFactory(slug=slug, name=slug.title())
    key = make_key(tenant, name=f"{slug} backend").api_key
    member = MembershipFactory(tenant=tenant, role=Role.VIEWER, user=UserFactory(username=f"{slug}-target"))
    record_many(tenant, events)
    head = audit_chain_head(tenant=tenant)
    return Side(
        tenant=tenant,
        key=key,
        member=member,
        secret=ClientSecretFactory(tenant=tenant, api_key=key),
        session=RealtimeSession.objects.create(tenant=tenant, api_key=key, model="gpt-realtime"),
        seq=head.seq if head else 0,
    )


@pytest.fixture(scope="module")
def world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    """Built once for the module inside a transaction rolled back at its end; each test's `db`
    savepoint keeps what one case changes from reaching the next."""
    with django_db_blocker.unblock(), transaction.atomic():
        a = _side("matrix-a", events=1)
        b = _side("matrix-b", events=30)
        assert b.seq > a.seq  # B's event seq is one A's own chain does not have
        clients = {}
        for role in ROLES:
            user = MembershipFactory(tenant=a.tenant, role=role, user=UserFactory(username=f"a-{role}")).user
            clients[role] = Client()
            clients[role].force_login(user)
        MembershipFactory(tenant=b.tenant, role=Role.OWNER, user=UserFactory(username="b-owner"))
        api_keys = {
            name: make_key(a.tenant, name=f"scopes {name}", scopes=list(scopes)).plaintext
            for name, scopes in SCOPE_SETS.items()
        }
        yield World(a=a, b=b, clients=clients, api_keys=api_keys)
        transaction.set_rollback(True)


# --- what fills each route parameter -----------------------------------------------------------


@dataclass(frozen=True)
class Target:
    own: Callable[[World], Any]
    foreign: Callable[[World], Any]
    missing: Any


# A route parameter (kwarg name) -> how to fill it. A new kind of object needs an entry here.
TARGETS: dict[str, Target] = {
    "tenant_slug": Target(lambda w: w.a.tenant.slug, lambda w: w.b.tenant.slug, MISSING_SLUG),
    "key_id": Target(lambda w: w.a.key.pk, lambda w: w.b.key.pk, 999_999_999),
    "membership_id": Target(lambda w: w.a.member.pk, lambda w: w.b.member.pk, 999_999_999),
    "secret_id": Target(lambda w: w.a.secret.pk, lambda w: w.b.secret.pk, "cs_" + "0" * 21),
    "session_id": Target(lambda w: w.a.session.pk, lambda w: w.b.session.pk, "rs_" + "0" * 21),
    "seq": Target(lambda w: w.a.seq, lambda w: w.b.seq, 999_999_999),
}


# --- the routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    route: str  # as in the URL conf: "console/<slug:tenant_slug>/keys/<int:key_id>/revoke/"
    name: str  # "console:key-revoke"
    params: tuple[str, ...]
    callback: Any


def walk(
    resolver: URLResolver, prefix: str = "", namespace: str = "", params: tuple[str, ...] = ()
) -> Iterator[Route]:
    for entry in resolver.url_patterns:
        here = (*params, *entry.pattern.regex.groupindex)
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry, prefix + str(entry.pattern), ns, here)
        elif isinstance(entry, URLPattern):
            yield Route(prefix + str(entry.pattern), namespace + (entry.name or ""), here, entry.callback)


ALL_ROUTES = list(walk(get_resolver()))
OBJECT_ROUTES = [r for r in ALL_ROUTES if r.params and r.route.startswith(ROOTS)]


def unknown_params(route: Route) -> list[str]:
    return [param for param in route.params if param not in TARGETS]


def url_for(route: str, values: dict[str, Any]) -> str:
    """Fill `<conv:name>` (URL conf) or `{name}` (OpenAPI) placeholders."""
    filled = re.sub(r"<(?:\w+:)?(\w+)>|\{(\w+)\}", lambda m: str(values[m.group(1) or m.group(2)]), route)
    return "/" + filled.lstrip("/")


# --- snapshots ----------------------------------------------------------------------------------


TENANT_TABLES = [
    (model, f.name)
    for model in apps.get_models()
    for f in model._meta.get_fields()
    if isinstance(f, models.ForeignKey) and f.related_model is Tenant
]


def tenant_rows(tenant: Tenant) -> dict[str, list[dict[str, Any]]]:
    """Every row tenant B owns, in every table with a tenant key, and its tenant row."""
    rows = {"tenants.Tenant": list(Tenant.objects.filter(pk=tenant.pk).values())}
    for model, name in TENANT_TABLES:
        label = model._meta.label
        rows[label] = rows.get(label, []) + list(
            model.objects.filter(**{name: tenant}).order_by("pk").values()
        )
    return rows


def changed_tables(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [label for label in before if before[label] != after[label]]


def attack_and_missing(world: World, send: Callable[[str], Any]) -> tuple[Any, Any, list[str]]:
    """`send("attack")` (B's object), then `send("missing")`; and what is already wrong: the two
    answered differently, or B's rows changed."""
    before = tenant_rows(world.b.tenant)
    attack = send("attack")
    after = tenant_rows(world.b.tenant)
    missing = send("missing")
    problems = []
    if attack.status_code != missing.status_code:
        problems.append(
            f"B's object answered {attack.status_code} (a missing one answers {missing.status_code})"
        )
    if changed := changed_tables(before, after):
        problems.append(f"tenant B's rows changed: {', '.join(changed)}")
    return attack, missing, problems


# --- console cases ------------------------------------------------------------------------------

# A POST body per page (from the console permission tests), so a page that forgot its guard would
# really change something here rather than just re-show a form.
POST_BODIES = {f"console:{name}": body for name, _arg, _roles, body in PAGES if body is not None}


@dataclass(frozen=True)
class ConsoleCase:
    route: Route
    method: str
    variant: str  # "foreign-tenant": B's slug (and B's object); "foreign-id": A's slug, B's object
    role: str

    @property
    def id(self) -> str:
        return f"{self.route.name}-{self.method}-{self.variant}-{self.role}"


def console_cases() -> list[ConsoleCase]:
    cases = []
    for route in OBJECT_ROUTES:
        if not route.route.startswith("console/") or unknown_params(route):
            continue
        methods = getattr(route.callback, "console_methods", ("GET", "POST"))
        variants = ["foreign-tenant"] + (["foreign-id"] if len(route.params) > 1 else [])
        for method in [m for m in methods if m == "GET" or m in MUTATING]:
            cases += [ConsoleCase(route, method, v, role) for v in variants for role in ROLES]
    return cases


def console_values(case: ConsoleCase, world: World, which: str) -> dict[str, Any]:
    """Route values for `which`: "attack" (B's object), "missing" (what nothing has) or "own"."""
    values = {param: TARGETS[param].own(world) for param in case.route.params}
    objects = [param for param in case.route.params if param != "tenant_slug"]
    if which == "attack":
        values.update({param: TARGETS[param].foreign(world) for param in objects})
        if case.variant == "foreign-tenant":
            values["tenant_slug"] = TARGETS["tenant_slug"].foreign(world)
    elif which == "missing":
        if case.variant == "foreign-tenant":
            values["tenant_slug"] = MISSING_SLUG
            values.update({param: TARGETS[param].foreign(world) for param in objects})
        else:
            values.update({param: TARGETS[param].missing for param in objects})
    return values


def console_body(case: ConsoleCase, world: World, values: dict[str, Any]) -> dict[str, Any]:
    body = dict(POST_BODIES.get(case.route.name, {}))
    if body.get("once") == "ONCE":  # a valid one-time form token of the requester's session
        page = world.clients[case.role].get(url_for("console/<slug>/keys/", {"slug": world.a.tenant.slug}))
        token = page.context.get("once") if page.status_code == 200 else None
        body["once"] = token or "no-token"
    if case.route.name == "console:member-role":
        body = {f"m{values['membership_id']}-role": "compliance"}
    return body


def console_request(case: ConsoleCase, world: World, which: str) -> Any:
    values = console_values(case, world, which)
    client = world.clients[case.role]
    url = url_for(case.route.route, values)
    if case.method == "GET":
        return client.get(url)
    return client.generic(
        case.method,
        url,
        data=urlencode(console_body(case, world, values), doseq=True),
        content_type="application/x-www-form-urlencoded",
    )


CONSOLE_CASES = console_cases()


@pytest.mark.django_db
@pytest.mark.parametrize("case", CONSOLE_CASES, ids=[c.id for c in CONSOLE_CASES])
def test_console_foreign_object(world: World, case: ConsoleCase) -> None:
    attack, missing, problems = attack_and_missing(world, lambda which: console_request(case, world, which))
    if attack.status_code != 404 or "404.html" not in [t.name for t in attack.templates]:
        problems.append("not the console's 404 page")
    if attack.content != missing.content:
        problems.append("B's object and a missing one do not look the same")
    assert not problems, "; ".join(problems)

    # the control: the same request on A's own object goes through when the role may open the page
    if case.role in case.route.callback.console_roles:
        own = console_request(case, world, "own")
        assert own.status_code != 404, "the page 404s for A's own object too: the case proves nothing"


# --- API cases ----------------------------------------------------------------------------------


def api_schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


@dataclass(frozen=True)
class ApiCase:
    operation_id: str
    method: str
    path: str  # OpenAPI template: "/api/v1/api_keys/{key_id}/revoke"
    params: tuple[str, ...]
    scopes: str

    @property
    def id(self) -> str:
        return f"{self.operation_id}-{self.method}-{self.scopes}"


def schema_operations() -> list[tuple[str, str, str, tuple[str, ...]]]:
    found = []
    for path, operations in api_schema()["paths"].items():
        for method, operation in operations.items():
            params = tuple(p["name"] for p in operation.get("parameters", []) if p.get("in") == "path")
            if params:
                found.append((operation["operationId"], method.upper(), path, params))
    return found


SCHEMA_OPERATIONS = schema_operations()
API_CASES = [
    ApiCase(op_id, method, path, params, scopes)
    for op_id, method, path, params in SCHEMA_OPERATIONS
    if all(param in TARGETS for param in params)
    for scopes in SCOPE_SETS
]


def api_request(case: ApiCase, world: World, which: str) -> Any:
    """`which`: "attack" (B's object), "missing" (what nothing has) or "own" (A's object)."""
    fill: dict[str, Callable[[Target], Any]] = {
        "attack": lambda t: t.foreign(world),
        "missing": lambda t: t.missing,
        "own": lambda t: t.own(world),
    }
    target = {param: fill[which](TARGETS[param]) for param in case.params}
    client = Client(HTTP_AUTHORIZATION=f"Bearer {world.api_keys[case.scopes]}")
    return client.generic(case.method, url_for(case.path, target))


def required_scope(case: ApiCase) -> str:
    route = next(r for r in OBJECT_ROUTES if _as_openapi(r.route) == case.path)
    return route.callback.view_class.required_scope


def _as_openapi(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


@pytest.mark.django_db
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_foreign_object(world: World, case: ApiCase) -> None:
    attack, missing, problems = attack_and_missing(world, lambda which: api_request(case, world, which))
    has_scope = required_scope(case) in SCOPE_SETS[case.scopes]
    if attack.json() != missing.json():
        problems.append("B's object and a missing one do not look the same")
    assert not problems, "; ".join(problems)
    assert attack.status_code == (404 if has_scope else 403)
    assert set(attack.json()["error"]) == {"message", "type", "param", "code"}

    if has_scope:  # the control: A's own object is there for the same key
        own = api_request(case, world, "own")
        assert own.status_code == 200, own.content[:300]


# --- the matrix covers everything ---------------------------------------------------------------


def test_every_object_route_is_in_the_matrix() -> None:
    problems = [
        f"{route.name or route.route} ({route.route}) takes '{param}', which the cross-tenant matrix "
        "cannot fill: add an entry for it to TARGETS in tests/gates/test_cross_tenant.py (tenant A's own "
        "object, tenant B's object, and a value nothing has)"
        for route in OBJECT_ROUTES
        for param in unknown_params(route)
    ]
    problems += [
        f"{route.name} ({route.route}) is a console page with a parameter but no console_view guard: "
        "guard it (realtime_platform/console.py) so it is tenant-scoped and the matrix knows its methods"
        for route in OBJECT_ROUTES
        if route.route.startswith("console/") and not hasattr(route.callback, "console_methods")
    ]
    assert not problems, "\n".join(problems)
    assert any(r.route.startswith(EXCLUDED) for r in ALL_ROUTES), "the admin exclusion no longer matches"


def test_url_conf_and_schema_agree() -> None:
    """The API routes with a parameter are exactly the schema's operations with a path parameter."""
    url_conf = {_as_openapi(r.route) for r in OBJECT_ROUTES if r.route.startswith(("api/", "v1/"))}
    schema = {path for _op, _method, path, _params in SCHEMA_OPERATIONS}
    assert url_conf == schema
    assert {c.path for c in API_CASES} == schema  # and every one of them is in the matrix
