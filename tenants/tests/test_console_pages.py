"""What tenant admins do in the console, through the test client: the page shows the state, a
change goes through the service (audited), and a refused change explains itself and changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from conftest import make_key
from tenants.models import ApiKey, Membership, QuotaOverride, Role, SessionPolicy, Tenant, UpstreamCredential
from tenants.tests.factories import MembershipFactory, UserFactory
from usage.models import Metric
from usage.services import quota_reserve


def url(tenant, name, *args):
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def once(client: Client, tenant) -> str:
    return client.get(url(tenant, "keys")).context["once"]


# --- Console home and switcher ------------------------------------------------------------------


@pytest.mark.django_db
def test_home_lists_every_tenant_of_a_member_of_several(owner, tenant, other_tenant):
    Membership.objects.create(user=owner, tenant=other_tenant, role=Role.VIEWER)
    client = signed_in(owner)
    page = client.get("/console/")
    assert page.status_code == 200
    body = page.content.decode()
    assert url(tenant, "overview") in body
    assert url(other_tenant, "overview") in body
    overview = client.get(url(tenant, "overview")).content.decode()
    assert 'class="switcher"' in overview  # the switcher appears only with several tenants
    assert url(other_tenant, "overview") in overview


@pytest.mark.django_db
def test_switcher_is_absent_for_a_member_of_one_tenant(owner, tenant):
    assert 'class="switcher"' not in signed_in(owner).get(url(tenant, "overview")).content.decode()


# --- Overview -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_overview_shows_consumption_against_limits(viewer, tenant):
    QuotaOverride.objects.create(tenant=tenant, secrets_per_day=40)
    for _ in range(10):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS)
    response = signed_in(viewer).get(url(tenant, "overview"))
    bars = {bar.label: bar for bar in response.context["bars"]}
    assert (bars["Client secrets"].used, bars["Client secrets"].limit) == (10, 40)
    assert bars["Client secrets"].percent == 25
    assert bars["Spending"].limit == Decimal("1000.00")
    body = response.content.decode()
    assert "10 of 40 (25%)" in body
    assert 'hx-get="' + url(tenant, "overview-quota-bars") in body  # refreshes itself


@pytest.mark.django_db
def test_quota_bar_partial_is_just_the_bars(viewer, tenant):
    response = signed_in(viewer).get(url(tenant, "overview-quota-bars"), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<meter" in body
    assert "<html" not in body


@pytest.mark.django_db
def test_htmx_request_after_sign_out_asks_for_a_full_page_login(tenant):
    response = Client().get(url(tenant, "overview-quota-bars"), HTTP_HX_REQUEST="true")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/"


@pytest.mark.django_db
def test_suspended_tenant_shows_a_banner(owner, tenant):
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert "This tenant is suspended" in signed_in(owner).get(url(tenant, "overview")).content.decode()


# --- Quotas & policy ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_raises_a_limit_within_the_plan(admin_user, tenant):
    QuotaOverride.objects.create(tenant=tenant, secrets_per_day=100)
    client = signed_in(admin_user)
    response = client.post(url(tenant, "quotas-limits"), {"secrets_per_day": "500", "tokens_per_month": ""})
    assert response.status_code == 302
    override = QuotaOverride.objects.get(tenant=tenant)
    assert override.secrets_per_day == 500
    event = AuditEvent.objects.filter(action="quota.changed").latest("id")
    assert event.details["changes"]["secrets_per_day"] == {"before": 100, "after": 500}
    assert event.actor_label == "alan"
    page = client.get(url(tenant, "quotas")).content.decode()
    assert "Limits saved." in page


@pytest.mark.django_db
def test_limit_above_the_plan_is_refused_on_its_field(owner, tenant):
    response = signed_in(owner).post(url(tenant, "quotas-limits"), {"secrets_per_day": "20000"})
    assert response.status_code == 200
    form = response.context["quota_form"]
    assert form.errors["secrets_per_day"] == ["secrets_per_day cannot exceed the plan's limit of 10000."]
    assert not QuotaOverride.objects.filter(tenant=tenant, secrets_per_day=20000).exists()


@pytest.mark.django_db
def test_limit_must_be_a_whole_number(owner, tenant):
    response = signed_in(owner).post(url(tenant, "quotas-limits"), {"concurrent_sessions": "-1"})
    assert response.status_code == 200
    assert "concurrent_sessions" in response.context["quota_form"].errors


def policy_body(**changes):
    body = {
        "secret_kind": "relay",
        "relay_single_use": "on",
        "ttl_min_seconds": "10",
        "ttl_default_seconds": "60",
        "ttl_max_seconds": "600",
        "ttl_mode": "clamp",
        "allowed_models": "gpt-realtime\ngpt-realtime-mini, gpt-realtime",
        "allowed_voices": "marin\ncedar",
        "restrict_tools": "on",
        "tool_allowlist": "lookup_order\nbook_table",
        "locked_fields": "audio.output.voice",
        "instructions_prefix": "You are Acme's assistant.",
        "max_output_tokens_ceiling": "1024",
        "max_session_seconds": "900",
        "session_cost_ceiling_usd": "0.5000",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.django_db
def test_policy_is_saved_with_lists_parsed_and_audited(owner, tenant):
    response = signed_in(owner).post(url(tenant, "quotas-policy"), policy_body())
    assert response.status_code == 302
    policy = SessionPolicy.objects.get(tenant=tenant)
    assert policy.allowed_models == ["gpt-realtime", "gpt-realtime-mini"]
    assert policy.allowed_voices == ["marin", "cedar"]
    assert policy.tool_allowlist == ["lookup_order", "book_table"]
    assert policy.locked_fields == ["audio.output.voice"]
    assert policy.max_output_tokens_ceiling == 1024
    assert policy.session_cost_ceiling_usd == Decimal("0.5")
    assert policy.instructions_prefix == "You are Acme's assistant."
    changes = AuditEvent.objects.filter(action="policy.changed").latest("id").details["changes"]
    assert changes["allowed_voices"] == {"before": [], "after": ["marin", "cedar"]}


@pytest.mark.django_db
def test_unticking_tool_restriction_allows_any_tool(owner, tenant):
    client = signed_in(owner)
    client.post(url(tenant, "quotas-policy"), policy_body())
    client.post(url(tenant, "quotas-policy"), policy_body(restrict_tools=None))
    assert SessionPolicy.objects.get(tenant=tenant).tool_allowlist is None
    # and the page shows what is saved
    form = client.get(url(tenant, "quotas")).context["policy_form"]
    assert form.initial["restrict_tools"] is False


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"ttl_min_seconds": "120"}, "ttl_default_seconds", "10 <= minimum <= default <= maximum"),
        ({"ttl_max_seconds": "9000"}, "ttl_max_seconds", "cannot exceed 7200"),
        ({"max_session_seconds": "99999"}, "max_session_seconds", "cannot exceed the plan's 3600"),
        ({"allowed_voices": "marin; drop table"}, "allowed_voices", "Not a valid entry"),
        ({"max_output_tokens_ceiling": "5000"}, "max_output_tokens_ceiling", "less than or equal to 4096"),
    ],
)
def test_invalid_policy_is_explained_and_nothing_changes(owner, tenant, changes, field, message):
    before = SessionPolicy.objects.filter(tenant=tenant).values().get()
    response = signed_in(owner).post(url(tenant, "quotas-policy"), policy_body(**changes))
    assert response.status_code == 200
    errors = response.context["policy_form"].errors
    assert message in " ".join(errors[field])
    assert SessionPolicy.objects.filter(tenant=tenant).values().get() == before


@pytest.mark.django_db
def test_own_openai_key_is_saved_encrypted_never_shown_and_switching_needs_one(owner, tenant):
    client = signed_in(owner)
    refused = client.post(url(tenant, "quotas-upstream"), {"upstream_mode": "own", "secret": ""})
    assert refused.status_code == 200
    assert "Save your own OpenAI API key" in " ".join(
        refused.context["upstream_form"].errors["upstream_mode"]
    )
    secret = "sk-proj-" + "S3cr3t" * 8
    response = client.post(url(tenant, "quotas-upstream"), {"upstream_mode": "own", "secret": secret})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.upstream_mode == Tenant.UpstreamMode.OWN
    credential = UpstreamCredential.objects.get(tenant=tenant)
    assert secret not in credential.ciphertext
    page = client.get(url(tenant, "quotas")).content.decode()
    assert secret not in page
    assert "sk-…" + secret[-4:] in page
    assert secret not in str(list(AuditEvent.objects.values_list("details", flat=True)))
    # deleting the key returns the tenant to the platform's key
    client.post(url(tenant, "quotas-upstream-delete"))
    tenant.refresh_from_db()
    assert tenant.upstream_mode == Tenant.UpstreamMode.PLATFORM
    assert not UpstreamCredential.objects.filter(tenant=tenant).exists()


# --- API keys -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_created_key_is_shown_once_and_works(owner, tenant):
    client = signed_in(owner)
    token = once(client, tenant)
    body = {
        "once": token,
        "name": "iOS backend",
        "scopes": ["secrets:create", "realtime:connect"],
        "expires_in_days": "30",
        "secrets_per_day": "50",
    }
    response = client.post(url(tenant, "key-create"), body)
    assert response.status_code == 200
    plaintext = response.context["issued"].plaintext
    page = response.content.decode()
    assert plaintext in page
    assert "shown only once" in page
    assert "data-copy" in page
    key = ApiKey.objects.get(tenant=tenant, name="iOS backend")
    assert key.scopes == ["secrets:create", "realtime:connect"]
    assert key.secrets_per_day == 50
    assert key.created_by == owner
    assert key.expires_at is not None
    # the key authenticates against the API
    assert (
        Client().get("/api/v1/tenant", HTTP_AUTHORIZATION=f"Bearer {plaintext}").status_code == 403
    )  # no manage:read
    # sending the same form again makes nothing and shows nothing
    again = client.post(url(tenant, "key-create"), body, follow=True)
    assert ApiKey.objects.filter(tenant=tenant, name="iOS backend").count() == 1
    assert plaintext not in again.content.decode()
    assert "already sent" in again.content.decode()
    # and the list never shows it
    assert plaintext not in client.get(url(tenant, "keys")).content.decode()


@pytest.mark.django_db
def test_key_form_errors_are_explained(owner, tenant):
    client = signed_in(owner)
    response = client.post(
        url(tenant, "key-create"),
        {"once": once(client, tenant), "name": "", "scopes": [], "secrets_per_day": "99999"},
    )
    assert response.status_code == 200
    errors = response.context["create_form"].errors
    assert "name" in errors
    assert errors["scopes"] == ["Choose at least one scope."]
    # a sub-limit above the tenant's is refused by the service, on its field
    response = client.post(
        url(tenant, "key-create"),
        {"once": once(client, tenant), "name": "k", "scopes": ["secrets:create"], "secrets_per_day": "99999"},
    )
    assert "cannot exceed the tenant's limit of 10000" in " ".join(
        response.context["create_form"].errors["secrets_per_day"]
    )
    assert not ApiKey.objects.filter(tenant=tenant).exists()


@pytest.mark.django_db
def test_rotation_shows_the_new_key_once_and_honours_the_grace_period(owner, tenant):
    old = make_key(tenant, name="server").api_key
    client = signed_in(owner)
    response = client.post(
        url(tenant, "key-rotate", old.pk), {"once": once(client, tenant), "grace_seconds": "3600"}
    )
    assert response.status_code == 200
    new_plaintext = response.context["issued"].plaintext
    assert new_plaintext in response.content.decode()
    old.refresh_from_db()
    assert old.revoked_at is None
    assert old.expires_at is not None
    assert "keeps working until" in response.content.decode()
    assert ApiKey.objects.get(rotated_from=old).name == "server"


@pytest.mark.django_db
def test_revoke_stops_the_key_and_is_audited(admin_user, tenant):
    issued = make_key(tenant, name="leaked")
    response = signed_in(admin_user).post(url(tenant, "key-revoke", issued.api_key.pk), follow=True)
    assert "is revoked" in response.content.decode()
    issued.api_key.refresh_from_db()
    assert issued.api_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="key.revoked", target_id=str(issued.api_key.pk)).count() == 1
    auth = Client().get("/api/v1/tenant", HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    assert auth.status_code == 401


@pytest.mark.django_db
def test_key_settings_set_and_clear_sub_limits(owner, tenant):
    key = make_key(tenant, name="test key").api_key
    client = signed_in(owner)
    response = client.post(
        url(tenant, "key-settings", key.pk),
        {
            "secrets_per_day": "100",
            "concurrent_sessions": "2",
            "cost_usd_per_month": "5.50",
            "secret_kind": "upstream",
        },
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.secrets_per_day, key.concurrent_sessions, key.cost_usd_per_month, key.secret_kind) == (
        100,
        2,
        Decimal("5.50"),
        "upstream",
    )
    assert "test key" in client.get(url(tenant, "quotas")).content.decode()  # listed under per-key limits
    client.post(url(tenant, "key-settings", key.pk), {"secrets_per_day": "", "secret_kind": ""})
    key.refresh_from_db()
    assert (key.secrets_per_day, key.secret_kind) == (None, "")
    changes = AuditEvent.objects.filter(action="key.settings_changed").latest("id").details["changes"]
    assert changes["secrets_per_day"] == {"before": 100, "after": None}


@pytest.mark.django_db
def test_key_list_shows_last_use_and_status(compliance_user, tenant):
    from django.utils import timezone

    used = make_key(tenant, name="busy").api_key
    ApiKey.objects.filter(pk=used.pk).update(last_used_at=timezone.now())
    revoked = make_key(tenant, name="old").api_key
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    response = signed_in(compliance_user).get(url(tenant, "keys"))
    body = response.content.decode()
    assert "ago</time>" in body
    assert "Revoked" in body
    assert "Create a key" not in body
    assert "Revoke</" not in body


# --- Members ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_add_member_by_username_or_email(owner, tenant):
    UserFactory(username="dora", email="Dora@Example.com")
    UserFactory(username="erin")
    client = signed_in(owner)
    assert client.post(url(tenant, "member-add"), {"identifier": "erin", "role": "viewer"}).status_code == 302
    assert (
        client.post(
            url(tenant, "member-add"), {"identifier": "dora@example.com", "role": "compliance"}
        ).status_code
        == 302
    )
    roles = dict(Membership.objects.filter(tenant=tenant).values_list("user__username", "role"))
    assert roles["erin"] == "viewer"
    assert roles["dora"] == "compliance"
    assert AuditEvent.objects.filter(action="member.added", tenant=tenant).count() >= 2


@pytest.mark.django_db
def test_adding_an_unknown_or_existing_member_is_explained(owner, tenant, viewer):
    client = signed_in(owner)
    unknown = client.post(url(tenant, "member-add"), {"identifier": "ghost", "role": "viewer"})
    assert unknown.status_code == 200
    assert "No account has that username or email" in " ".join(
        unknown.context["add_form"].errors["identifier"]
    )
    twice = client.post(url(tenant, "member-add"), {"identifier": "victor", "role": "admin"})
    assert twice.status_code == 200
    assert "already a member" in twice.content.decode()
    assert Membership.objects.get(user=viewer, tenant=tenant).role == Role.VIEWER


@pytest.mark.django_db
def test_email_shared_by_several_accounts_is_ambiguous(owner, tenant):
    UserFactory(username="twin1", email="twin@example.com")
    UserFactory(username="twin2", email="twin@example.com")
    response = signed_in(owner).post(
        url(tenant, "member-add"), {"identifier": "twin@example.com", "role": "viewer"}
    )
    assert response.status_code == 200
    assert not Membership.objects.filter(tenant=tenant, user__username__startswith="twin").exists()


@pytest.mark.django_db
def test_last_owner_cannot_be_demoted_or_removed(owner, tenant):
    membership = Membership.objects.get(user=owner, tenant=tenant)
    client = signed_in(owner)
    demote = client.post(
        url(tenant, "member-role", membership.pk), {f"m{membership.pk}-role": "admin"}, follow=True
    )
    assert "at least one owner" in demote.content.decode()
    remove = client.post(url(tenant, "member-remove", membership.pk), follow=True)
    assert "last owner cannot be removed" in remove.content.decode()
    assert Membership.objects.get(pk=membership.pk).role == Role.OWNER


@pytest.mark.django_db
def test_admin_cannot_touch_owners_nor_grant_ownership(owner, admin_user, viewer, tenant):
    client = signed_in(admin_user)
    owner_membership = Membership.objects.get(user=owner, tenant=tenant)
    viewer_membership = Membership.objects.get(user=viewer, tenant=tenant)
    assert client.post(url(tenant, "member-remove", owner_membership.pk)).status_code == 404
    promote = client.post(
        url(tenant, "member-role", viewer_membership.pk), {f"m{viewer_membership.pk}-role": "owner"}
    )
    assert promote.status_code == 302
    assert Membership.objects.get(pk=viewer_membership.pk).role == Role.VIEWER
    UserFactory(username="frank")
    add = client.post(url(tenant, "member-add"), {"identifier": "frank", "role": "owner"})
    assert add.status_code == 200
    assert not Membership.objects.filter(user__username="frank").exists()
    page = client.get(url(tenant, "members")).content.decode()
    assert '<option value="owner"' not in page  # the choice is not even offered


@pytest.mark.django_db
def test_owner_promotes_and_then_may_step_down(owner, admin_user, tenant):
    client = signed_in(owner)
    admin_membership = Membership.objects.get(user=admin_user, tenant=tenant)
    client.post(url(tenant, "member-role", admin_membership.pk), {f"m{admin_membership.pk}-role": "owner"})
    own = Membership.objects.get(user=owner, tenant=tenant)
    response = client.post(url(tenant, "member-role", own.pk), {f"m{own.pk}-role": "viewer"})
    assert response["Location"] == url(tenant, "overview")  # no longer manages: back to the overview
    assert Membership.objects.get(pk=own.pk).role == Role.VIEWER
    assert client.get(url(tenant, "members")).status_code == 404


@pytest.mark.django_db
def test_member_removed_loses_access_at_once(owner, tenant):
    target = MembershipFactory(tenant=tenant, role=Role.ADMIN, user=UserFactory(username="leaving"))
    their_client = signed_in(target.user)
    assert their_client.get(url(tenant, "keys")).status_code == 200
    signed_in(owner).post(url(tenant, "member-remove", target.pk))
    assert their_client.get(url(tenant, "keys")).status_code == 404
    assert their_client.get(url(tenant, "overview")).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["keys", "members", "quotas", "overview"])
def test_page_query_count_does_not_grow_with_rows(owner, tenant, page):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = signed_in(owner)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url(tenant, page)).status_code == 200
        return len(captured)

    def add_rows(n: int, start: int) -> None:
        for i in range(start, start + n):
            make_key(tenant, name=f"k{i}", secrets_per_day=10, created_by=owner)
            MembershipFactory(tenant=tenant, role=Role.VIEWER, user=UserFactory(username=f"member{i}"))

    add_rows(2, 0)
    queries()  # the first request after sign-in also stamps the session
    few = queries()
    add_rows(10, 2)
    assert queries() == few
