"""Console sign-in: CSRF, session rotation, throttling per username and per IP, audit records,
sign-out, idle and absolute timeouts, the admin's sign-in going through the same door."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.test import Client

from audit.models import AuditEvent
from realtime_platform.console_auth import SESSION_AUTH_AT, SESSION_SEEN_AT
from tenants.tests.factories import UserFactory

PASSWORD = "correct horse battery staple"  # UserFactory's
LOGIN = "/console/login/"


def sign_in(client: Client, username: str, password: str = PASSWORD, **extra):
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def events(action: str, **filters):
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


@pytest.mark.django_db
def test_sign_in_rotates_the_session_and_lands_on_the_only_tenant(owner, tenant):
    client = Client()
    client.get(LOGIN)
    client.session.save()
    anonymous_key = client.session.session_key
    response = sign_in(client, "alice")
    assert response.status_code == 302
    assert response["Location"] == "/console/"
    assert client.session.session_key != anonymous_key  # no session fixation
    assert int(client.session[SESSION_KEY]) == owner.pk
    assert client.get("/console/")["Location"] == f"/console/{tenant.slug}/"


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_httponly_and_samesite(owner):
    client = Client()
    page = client.get(LOGIN)
    assert page.cookies["csrftoken"]["samesite"] == "Lax"
    response = sign_in(client, "alice")
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


@pytest.mark.django_db
def test_sign_in_form_needs_the_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    assert sign_in(client, "alice").status_code == 403
    assert SESSION_KEY not in client.session


@pytest.mark.django_db
def test_sign_in_follows_next_only_within_the_site(owner, tenant):
    client = Client()
    response = client.post(
        LOGIN, {"username": "alice", "password": PASSWORD, "next": f"/console/{tenant.slug}/keys/"}
    )
    assert response["Location"] == f"/console/{tenant.slug}/keys/"
    response = Client().post(
        LOGIN, {"username": "alice", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert response["Location"] == "/console/"


@pytest.mark.django_db
def test_successful_sign_in_is_audited_in_each_tenant_of_the_user(owner, tenant, other_tenant):
    from tenants.models import Membership, Role

    Membership.objects.create(user=owner, tenant=other_tenant, role=Role.VIEWER)
    sign_in(Client(), "alice", REMOTE_ADDR="203.0.113.7")
    logins = events("auth.login")
    assert {e.tenant_id for e in logins} == {tenant.pk, other_tenant.pk}
    for event in logins:
        assert (event.actor_type, event.actor_id, event.actor_label) == ("user", str(owner.pk), "alice")
        assert event.ip == "203.0.113.7"
        assert event.target_type == "auth.user"


@pytest.mark.django_db
def test_failed_sign_in_is_audited_in_the_users_tenant_without_the_password(owner, tenant):
    response = sign_in(Client(), "alice", "wrong-password-123")
    assert response.status_code == 200
    assert "do not match an account" in response.content.decode()
    (event,) = events("auth.login_failed")
    assert event.tenant_id == tenant.pk
    assert event.details == {"username": "alice", "reason": "invalid_credentials"}
    assert event.actor_id == ""  # nobody proved they are alice
    assert "wrong-password-123" not in str(AuditEvent.objects.values_list("details", flat=True)[::1])


@pytest.mark.django_db
def test_failed_sign_in_for_an_unknown_user_goes_to_the_platform_chain(tenant):
    sign_in(Client(), "nobody-here", "whatever-password")
    (event,) = events("auth.login_failed")
    assert event.tenant_id is None
    assert event.chain == "platform"
    assert event.details["username"] == "nobody-here"


@pytest.mark.django_db
def test_an_account_in_no_tenant_signs_in_and_is_told_so(db):
    UserFactory(username="lonely")
    client = Client()
    sign_in(client, "lonely")
    assert events("auth.login")[0].chain == "platform"
    page = client.get("/console/")
    assert page.status_code == 200
    assert "not a member of any tenant" in page.content.decode()


@pytest.mark.django_db
def test_failures_per_username_are_throttled_even_with_the_right_password(owner, settings):
    settings.CONSOLE_LOGIN_FAILURES_PER_USERNAME = "3/15m"
    for i in range(3):  # from different addresses: the per-username limit still counts them
        sign_in(Client(), "alice", "wrong-password", REMOTE_ADDR=f"198.51.100.{i}")
    client = Client()
    response = sign_in(client, "alice", REMOTE_ADDR="198.51.100.99")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Too many failed sign-in attempts" in body
    assert "try again in" in body
    assert SESSION_KEY not in client.session
    failures = events("auth.login_failed")
    assert len(failures) == 3  # refused attempts are not audited one by one…
    assert failures[-1].details.get("throttle_engaged") is True  # …the moment the throttle engaged is
    # another username from the same addresses is unaffected
    UserFactory(username="zoe")
    assert sign_in(Client(), "zoe", REMOTE_ADDR="198.51.100.99").status_code == 302


@pytest.mark.django_db
def test_failures_per_ip_are_throttled_across_usernames(owner, settings):
    settings.CONSOLE_LOGIN_FAILURES_PER_IP = "4/15m"
    for i in range(4):
        sign_in(Client(), f"guess{i}", "wrong-password", REMOTE_ADDR="192.0.2.50")
    response = sign_in(Client(), "alice", REMOTE_ADDR="192.0.2.50")
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert sign_in(Client(), "alice", REMOTE_ADDR="192.0.2.51").status_code == 302


@pytest.mark.django_db
def test_usernames_are_throttled_case_insensitively(owner, settings):
    settings.CONSOLE_LOGIN_FAILURES_PER_USERNAME = "2/15m"
    sign_in(Client(), "Alice", "wrong", REMOTE_ADDR="10.0.0.1")
    sign_in(Client(), "ALICE", "wrong", REMOTE_ADDR="10.0.0.2")
    assert "Too many failed" in sign_in(Client(), "alice", REMOTE_ADDR="10.0.0.3").content.decode()


@pytest.mark.django_db
def test_sign_out_needs_post_and_is_audited(owner, tenant):
    client = Client()
    client.force_login(owner)
    assert client.get("/console/logout/").status_code == 405
    assert SESSION_KEY in client.session
    response = client.post("/console/logout/")
    assert response["Location"] == LOGIN
    assert SESSION_KEY not in client.session
    (event,) = events("auth.logout")
    assert event.tenant_id == tenant.pk
    assert client.get(f"/console/{tenant.slug}/")["Location"].startswith(LOGIN)


def _age_session(client: Client, *, auth_ago: int, seen_ago: int) -> None:
    session = client.session
    now = int(time.time())
    session[SESSION_AUTH_AT] = now - auth_ago
    session[SESSION_SEEN_AT] = now - seen_ago
    session.save()


@pytest.mark.django_db
def test_idle_session_ends_with_a_message(owner, tenant, settings):
    settings.CONSOLE_IDLE_TIMEOUT_SECONDS = 600
    client = Client()
    client.force_login(owner)
    _age_session(client, auth_ago=700, seen_ago=599)
    assert client.get(f"/console/{tenant.slug}/").status_code == 200  # active enough
    _age_session(client, auth_ago=1300, seen_ago=601)
    response = client.get(f"/console/{tenant.slug}/", follow=True)
    assert response.redirect_chain[0][0].startswith(LOGIN)
    assert "signed out after 10 minutes without activity" in response.content.decode()
    assert SESSION_KEY not in client.session


@pytest.mark.django_db
def test_session_ends_after_the_absolute_lifetime_however_active(owner, tenant, settings):
    settings.CONSOLE_ABSOLUTE_TIMEOUT_SECONDS = 3600
    client = Client()
    client.force_login(owner)
    _age_session(client, auth_ago=3601, seen_ago=5)
    response = client.get(f"/console/{tenant.slug}/", follow=True)
    assert "Sessions last at most 1 hours" in response.content.decode()
    assert SESSION_KEY not in client.session


@pytest.mark.django_db
def test_activity_is_recorded_at_most_once_a_minute(owner, tenant):
    client = Client()
    client.force_login(owner)
    _age_session(client, auth_ago=100, seen_ago=30)
    seen = client.session[SESSION_SEEN_AT]
    client.get(f"/console/{tenant.slug}/")
    assert client.session[SESSION_SEEN_AT] == seen
    _age_session(client, auth_ago=100, seen_ago=61)
    client.get(f"/console/{tenant.slug}/")
    assert client.session[SESSION_SEEN_AT] >= int(time.time()) - 1


@pytest.mark.django_db
def test_console_pages_carry_a_strict_csp_and_are_not_cached(owner, tenant):
    client = Client()
    client.force_login(owner)
    for url in (LOGIN, f"/console/{tenant.slug}/", f"/console/{tenant.slug}/keys/"):
        response = client.get(url)
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
        assert "no-store" in response["Cache-Control"]


@pytest.mark.django_db
def test_admin_sign_in_is_throttled_and_audited_too(settings):
    settings.CONSOLE_LOGIN_FAILURES_PER_USERNAME = "2/15m"
    UserFactory(username="ops", is_staff=True, is_superuser=True)
    UserFactory(username="ops2", is_staff=True, is_superuser=True)
    UserFactory(username="notstaff")
    client = Client()
    response = client.post("/admin/login/", {"username": "notstaff", "password": PASSWORD})
    assert response.status_code == 200  # right password, but the admin admits staff only
    assert events("auth.login_failed")[-1].details["reason"] == "not_allowed"
    for _ in range(2):
        client.post("/admin/login/", {"username": "ops", "password": "wrong"})
    response = client.post("/admin/login/", {"username": "ops", "password": PASSWORD})
    assert "Too many failed sign-in attempts" in response.content.decode()
    response = Client().post("/admin/login/?next=/admin/", {"username": "ops2", "password": PASSWORD})
    assert response.status_code == 302
    assert events("auth.login")[-1].actor_label == "ops2"


@pytest.mark.django_db
def test_background_polling_is_not_activity(owner, tenant, settings):
    settings.CONSOLE_IDLE_TIMEOUT_SECONDS = 600
    client = Client()
    client.force_login(owner)
    _age_session(client, auth_ago=500, seen_ago=400)
    seen = client.session[SESSION_SEEN_AT]
    bars = f"/console/{tenant.slug}/overview/quota-bars/"
    assert client.get(bars, HTTP_HX_REQUEST="true", HTTP_X_CONSOLE_BACKGROUND="1").status_code == 200
    assert client.session[SESSION_SEEN_AT] == seen  # the open tab does not keep the session alive
    _age_session(client, auth_ago=800, seen_ago=601)
    response = client.get(bars, HTTP_HX_REQUEST="true", HTTP_X_CONSOLE_BACKGROUND="1")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/"  # the tab goes to the sign-in page
