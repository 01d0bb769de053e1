"""Every console page and action by every role, an outsider and an anonymous visitor.

Allowed: the page answers (200, or the action's redirect) and the action changes something.
Refused: 404 for any signed-in user who may not (never 403, so nobody learns what exists), the
login page for anonymous visitors, and in every refused case the database is exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from audit.selectors import audit_chain_head
from audit.tests.conftest import record_many
from conftest import make_key
from relay.models import RealtimeSession
from tenants.models import ApiKey, Membership, QuotaOverride, Role, SessionPolicy, UpstreamCredential
from tenants.tests.factories import MembershipFactory, UserFactory
from tokens.models import ClientSecret
from tokens.tests.factories import ClientSecretFactory

ALL = {"owner", "admin", "compliance", "viewer"}
MANAGE = {"owner", "admin"}
AUDIT = {"owner", "admin", "compliance"}
PRINCIPALS = ["owner", "admin", "compliance", "viewer", "outsider", "anonymous"]


@dataclass
class World:
    tenant: Any
    other_tenant: Any
    users: dict[str, Any]
    key: ApiKey
    other_key: ApiKey
    target: Membership  # a viewer everyone who manages may change
    other_member: Membership  # a member of the other tenant
    secret: ClientSecret
    other_secret: ClientSecret
    other_seq: int  # an audit event of the other tenant whose seq the tenant's chain has not reached
    session: RealtimeSession  # live
    other_session: RealtimeSession


@pytest.fixture
def world(tenant, other_tenant, owner, admin_user, compliance_user, viewer, outsider) -> World:
    target = MembershipFactory(tenant=tenant, role=Role.VIEWER, user=UserFactory(username="tina"))
    UserFactory(username="newcomer", email="newcomer@example.com")
    UpstreamCredential.objects.create(tenant=tenant, ciphertext="x", last_four="abcd")
    key = make_key(tenant, name="backend").api_key
    other_key = make_key(other_tenant, name="bob backend").api_key
    record_many(other_tenant, 40)
    other_seq = audit_chain_head(tenant=other_tenant).seq
    assert audit_chain_head(tenant=tenant).seq < other_seq
    return World(
        tenant=tenant,
        other_tenant=other_tenant,
        users={
            "owner": owner,
            "admin": admin_user,
            "compliance": compliance_user,
            "viewer": viewer,
            "outsider": outsider,
        },
        key=key,
        other_key=other_key,
        target=target,
        other_member=Membership.objects.get(user=outsider),
        secret=ClientSecretFactory(tenant=tenant, api_key=key),
        other_secret=ClientSecretFactory(tenant=other_tenant, api_key=other_key),
        other_seq=other_seq,
        session=RealtimeSession.objects.create(tenant=tenant, api_key=key, model="gpt-realtime"),
        other_session=RealtimeSession.objects.create(
            tenant=other_tenant, api_key=other_key, model="gpt-realtime"
        ),
    )


def client_for(world: World, principal: str) -> Client:
    client = Client()
    if principal != "anonymous":
        client.force_login(world.users[principal])
    return client


def state(world: World) -> dict[str, Any]:
    """Everything a console action could change, for both tenants."""
    return {
        "keys": list(
            ApiKey.objects.order_by("pk").values_list(
                "pk", "name", "revoked_at", "expires_at", "secrets_per_day", "secret_kind"
            )
        ),
        "members": list(Membership.objects.order_by("pk").values_list("pk", "tenant_id", "user_id", "role")),
        "overrides": list(QuotaOverride.objects.order_by("pk").values()),
        "policies": list(SessionPolicy.objects.order_by("pk").values()),
        "credentials": list(UpstreamCredential.objects.order_by("pk").values_list("pk", "ciphertext")),
        "tenants": list(
            world.tenant.__class__.objects.order_by("pk").values_list(
                "pk",
                "upstream_mode",
                "alert_thresholds",
                "alert_webhook_url",
                "alert_emails",
                "alert_webhook_secret_encrypted",
            )
        ),
        "secrets": list(ClientSecret.objects.order_by("pk").values_list("pk", "status", "revoked_at")),
        "sessions": list(RealtimeSession.objects.order_by("pk").values_list("pk", "status", "ended_at")),
        "audit": AuditEvent.objects.count(),
    }


def once_token(client: Client, world: World) -> str:
    """The one-time token of the keys page's forms, as the page hands it to this user."""
    response = client.get(reverse("console:keys", args=[world.tenant.slug]))
    token = response.context.get("once") if response.status_code == 200 else None
    return token or "no-token"


POLICY = {
    "secret_kind": "upstream",
    "allowed_models": "gpt-realtime",
    "allowed_voices": "marin",
    "ttl_min_seconds": "10",
    "ttl_default_seconds": "60",
    "ttl_max_seconds": "300",
    "ttl_mode": "reject",
    "instructions_prefix": "Be brief.",
    "locked_fields": "",
    "tool_allowlist": "",
    "max_session_seconds": "600",
}

# name, URL arguments after the slug ("?…": a query string), allowed roles, POST body (None: a GET page)
PAGES: list[tuple[str, str, set[str], Any]] = [
    ("overview", "", ALL, None),
    ("overview-quota-bars", "", ALL, None),
    ("quotas", "", MANAGE, None),
    ("keys", "", AUDIT, None),
    ("key-settings", "key", MANAGE, None),
    ("members", "", AUDIT, None),
    ("quotas-limits", "", MANAGE, {"secrets_per_day": "77"}),
    ("quotas-policy", "", MANAGE, POLICY),
    ("quotas-upstream", "", MANAGE, {"upstream_mode": "own", "secret": "sk-proj-" + "k" * 40}),
    ("quotas-upstream-delete", "", MANAGE, {}),
    ("key-create", "", MANAGE, {"name": "new", "scopes": ["secrets:create"], "once": "ONCE"}),
    ("key-settings", "key", MANAGE, {"secrets_per_day": "5", "secret_kind": "relay"}),
    ("key-rotate", "key", MANAGE, {"grace_seconds": "0", "once": "ONCE"}),
    ("key-revoke", "key", MANAGE, {}),
    ("member-add", "", MANAGE, {"identifier": "newcomer", "role": "viewer"}),
    ("member-role", "target", MANAGE, {"role": "compliance"}),
    ("member-remove", "target", MANAGE, {}),
    ("dashboard", "", ALL, None),
    ("dashboard", "?range=24h", ALL, None),
    ("alerts", "", MANAGE, None),
    ("alerts-settings", "", MANAGE, {"thresholds": "50, 90", "webhook_url": "", "emails": "ops@example.com"}),
    ("alerts-rotate", "", MANAGE, {"once": "ONCE"}),
    ("secrets", "", AUDIT, None),
    ("secrets", "?status=active&kind=relay", AUDIT, None),
    ("secret-revoke", "secret", MANAGE, {}),
    ("sessions", "", AUDIT, None),
    ("sessions", "?status=all&credential=api_key", AUDIT, None),
    ("session-terminate", "session", MANAGE, {}),
    ("sessions-terminate-all", "", MANAGE, {}),
    ("audit", "", AUDIT, None),
    ("audit", "?action=key.created", AUDIT, None),
    ("audit-event", "seq", AUDIT, None),
    ("audit-integrity", "", AUDIT, None),
    ("audit-integrity", "?verify=1", AUDIT, None),
    ("audit-export", "", AUDIT, {"format": "csv"}),
    ("audit-export", "", AUDIT, {"format": "pdf", "action": "key.created"}),
]


def url_of(world: World, name: str, arg: str, tenant: Any = None) -> str:
    args: list[Any] = [(tenant or world.tenant).slug]
    if arg == "key":
        args.append(world.key.pk)
    elif arg == "target":
        args.append(world.target.pk)
    elif arg == "secret":
        args.append(world.secret.pk)
    elif arg == "session":
        args.append(world.session.pk)
    elif arg == "seq":
        args.append(1)
    query = arg if arg.startswith("?") else ""
    return reverse(f"console:{name}", args=args) + query


# The other tenant's object of each kind, and an id no tenant has.
def foreign_and_missing(world: World, arg: str) -> tuple[Any, Any]:
    return {
        "key": (world.other_key.pk, 999_999),
        "target": (world.other_member.pk, 999_999),
        "secret": (world.other_secret.pk, "cs_doesNotExist000000000"),
        "session": (world.other_session.pk, "rs_doesNotExist000000000"),
        "seq": (world.other_seq, 999_999),
    }[arg]


def body_for(world: World, name: str, body: dict[str, Any], client: Client) -> dict[str, Any]:
    body = dict(body)
    if body.get("once") == "ONCE":
        body["once"] = once_token(client, world)
    if name == "member-role":
        body = {f"m{world.target.pk}-role": body["role"]}
    return body


@pytest.mark.django_db
@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(
    ("name", "arg", "allowed", "body"),
    PAGES,
    ids=[f"{p[0]}{p[1] if p[1][:1] == '?' else ''}-{'post' if p[3] is not None else 'get'}" for p in PAGES],
)
def test_console_permission_matrix(world, principal, name, arg, allowed, body):
    client = client_for(world, principal)
    url = url_of(world, name, arg)
    if body is not None:
        body = body_for(world, name, body, client)
    before = state(world)
    response = client.get(url) if body is None else client.post(url, body)
    after = state(world)

    if principal == "anonymous":
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("console:login") + "?next=")
        assert after == before
    elif principal in allowed:
        if body is None:
            assert response.status_code == 200
        else:
            assert response.status_code in (200, 302), response.content[:500]
            assert after != before, "an allowed action must change something"
            changed = {k for k in before if before[k] != after[k]}
            assert "audit" in changed, "every change is audited"
    else:
        assert response.status_code == 404
        assert after == before


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "arg", "allowed", "body"), [p for p in PAGES if p[1] and p[1][0] != "?"])
def test_owner_cannot_reach_other_tenants_objects_through_own_tenant(world, name, arg, allowed, body):
    """Alice owns A; B's key, member, client secret or audit event id under A's slug is as
    unknown as a made-up id."""
    client = client_for(world, "owner")
    foreign_id, missing_id = foreign_and_missing(world, arg)
    url = reverse(f"console:{name}", args=[world.tenant.slug, foreign_id])
    missing = reverse(f"console:{name}", args=[world.tenant.slug, missing_id])
    before = state(world)
    if body is None:
        responses = [client.get(url), client.get(missing)]
    else:
        payload = body_for(world, name, body, client)
        if name == "member-role":
            payload = {f"m{foreign_id}-role": "compliance"}
        responses = [client.post(url, payload), client.post(missing, payload)]
    assert [r.status_code for r in responses] == [404, 404]
    assert state(world) == before


@pytest.mark.django_db
def test_unknown_tenant_and_foreign_tenant_look_the_same(world):
    client = client_for(world, "owner")
    foreign = client.get(reverse("console:overview", args=[world.other_tenant.slug]))
    unknown = client.get(reverse("console:overview", args=["no-such-tenant"]))
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.content == unknown.content


@pytest.mark.django_db
def test_wrong_method_is_405_only_for_those_allowed_to_know_the_page_exists(world):
    url = reverse("console:key-revoke", args=[world.tenant.slug, world.key.pk])
    assert client_for(world, "owner").get(url).status_code == 405
    assert client_for(world, "viewer").get(url).status_code == 404


@pytest.mark.django_db
def test_post_without_csrf_token_is_refused_and_changes_nothing(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["owner"])
    before = state(world)
    response = client.post(reverse("console:key-revoke", args=[world.tenant.slug, world.key.pk]))
    assert response.status_code == 403
    assert state(world) == before


ALL_PAGES = (
    "Overview",
    "Usage",
    "Quotas & policy",
    "API keys",
    "Client secrets",
    "Live sessions",
    "Members",
    "Audit trail",
)


@pytest.mark.django_db
def test_navigation_shows_each_role_only_what_it_may_open(world):
    expected = {
        "owner": list(ALL_PAGES),
        "admin": list(ALL_PAGES),
        "compliance": [page for page in ALL_PAGES if page != "Quotas & policy"],
        "viewer": ["Overview", "Usage"],
    }
    for principal, labels in expected.items():
        response = client_for(world, principal).get(reverse("console:overview", args=[world.tenant.slug]))
        assert [item["label"] for item in response.context["console"].nav] == labels
        for item in response.context["console"].nav:  # every link it shows opens
            assert client_for(world, principal).get(item["url"]).status_code == 200
