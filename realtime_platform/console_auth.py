"""Signing in to the console and the operators' admin: throttled, audited, time-limited sessions.

- Sign-in rotates the session key and the CSRF token (Django's `login()`); cookies are HttpOnly
  and SameSite=Lax (settings). Sessions end after `CONSOLE_IDLE_TIMEOUT_SECONDS` without a request
  and `CONSOLE_ABSOLUTE_TIMEOUT_SECONDS` after sign-in, checked on the server by
  `ConsoleSessionMiddleware` (a cookie's own expiry is only advice to the browser).
- Failed sign-ins are counted per username and per client IP (django-ratelimit, in the cache);
  past either limit, attempts are refused before the password is even checked, with a message
  that says how long to wait.
- Every sign-in, failed sign-in and sign-out is in the audit trail: in the chain of each tenant the
  account belongs to, or the platform chain when it matches no tenant (unknown usernames, operators
  without a tenant). The password never is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import authenticate, get_user_model, logout
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST
from django_ratelimit.core import get_usage

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform.errors import is_api_path
from realtime_platform.http import client_ip
from tenants.selectors import membership_list_for_user

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

    from tenants.models import Tenant

logger = logging.getLogger(__name__)

SESSION_AUTH_AT = "rtp_auth_at"  # unix seconds of sign-in
SESSION_SEEN_AT = "rtp_seen_at"  # unix seconds of the last request (written at most once a minute)
SEEN_RESOLUTION_SECONDS = 60
# Requests a page makes by itself (htmx polling) send this header: they keep showing fresh data but
# are not activity, so a console left open in a tab still signs out after the idle timeout.
BACKGROUND_HEADER = "X-Console-Background"

# Console pages run no inline script or style, so a strict policy costs nothing and blunts XSS.
CONSOLE_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


# --- Throttling --------------------------------------------------------------------------------


def _constant(value: str) -> Callable[[str, HttpRequest], str]:
    def key(group: str, request: HttpRequest) -> str:
        return value

    return key


def _throttle_usages(request: HttpRequest, username: str, *, increment: bool) -> list[dict[str, Any]]:
    """django-ratelimit's counters of failed sign-ins for this username and this client IP."""
    scopes = (
        ("console-login-username", settings.CONSOLE_LOGIN_FAILURES_PER_USERNAME, username.strip().lower()),
        ("console-login-ip", settings.CONSOLE_LOGIN_FAILURES_PER_IP, client_ip(request.META) or "unknown"),
    )
    usages = []
    for group, rate, value in scopes:
        usage = get_usage(request, group=group, key=_constant(value), rate=rate, increment=increment)
        if usage is not None:
            usages.append(usage)
    return usages


def login_wait_seconds(request: HttpRequest, username: str) -> int | None:
    """How long until this username may try again from this address; None when it may now."""
    waits = [
        u["time_left"]
        for u in _throttle_usages(request, username, increment=False)
        if u["count"] >= u["limit"]
    ]
    return max(1, *waits) if waits else None


def throttled_message(wait_seconds: int) -> str:
    minutes = max(1, math.ceil(wait_seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return (
        f"Too many failed sign-in attempts. For your security, sign-in is paused: try again in "
        f"{minutes} {unit}."
    )


# --- Audit -------------------------------------------------------------------------------------


@transaction.atomic
def _audit_auth(
    request: HttpRequest,
    action: str,
    *,
    actor: Actor,
    user: AbstractBaseUser | None,
    details: dict[str, Any],
) -> None:
    chains: list[Tenant | None] = (
        [m.tenant for m in membership_list_for_user(user=user)]  # type: ignore[arg-type]
        if user is not None
        else []
    )
    for tenant in chains or [None]:
        audit_record(tenant=tenant, actor=actor, action=action, target=user, details=details)


def login_succeeded(request: HttpRequest, user: AbstractBaseUser) -> None:
    actor = Actor.for_user(user, ip=client_ip(request.META))
    _audit_auth(request, "auth.login", actor=actor, user=user, details={"username": user.get_username()})
    logger.info("console sign-in user=%s", user.pk)


def login_failed(request: HttpRequest, username: str, *, reason: str, count: bool = True) -> None:
    """Audit a refused sign-in and (for a wrong password) count it towards the throttle."""
    details: dict[str, Any] = {"username": username[:150], "reason": reason}
    if count:
        usages = _throttle_usages(request, username, increment=True)
        if any(u["count"] == u["limit"] for u in usages):
            details["throttle_engaged"] = True  # the next attempt will be refused
    user = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    # The actor only claims to be `username`: no user id, since nobody proved they are that user.
    actor = Actor(kind="user", id="", label=username[:150], ip=client_ip(request.META))
    _audit_auth(request, "auth.login_failed", actor=actor, user=user, details=details)
    logger.info("console sign-in failed reason=%s known_user=%s", reason, user is not None)


class ThrottledAuthenticationForm(AuthenticationForm):
    """AuthenticationForm.clean with throttling and audit records. The console's sign-in form and
    the admin's both build on it, so there is no un-throttled way in."""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        request = self.request
        if username is None or not password or request is None:
            return self.cleaned_data  # the missing field already carries its error
        wait = login_wait_seconds(request, username)
        if wait is not None:
            logger.warning("console sign-in refused: throttled")
            raise forms.ValidationError(throttled_message(wait), code="throttled")
        self.user_cache = authenticate(request, username=username, password=password)
        if self.user_cache is None:
            login_failed(request, username, reason="invalid_credentials")
            raise self.get_invalid_login_error()
        try:
            self.confirm_login_allowed(self.user_cache)
        except forms.ValidationError:
            # The password was right (so nothing to throttle), but this form admits only some users.
            login_failed(request, username, reason="not_allowed", count=False)
            raise
        login_succeeded(request, self.user_cache)
        return self.cleaned_data


class ConsoleLoginForm(ThrottledAuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That username and password do not match an account. Both are case-sensitive.",
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["username"].widget.attrs.update({"autocomplete": "username", "autocapitalize": "none"})
        self.fields["password"].widget.attrs.update({"autocomplete": "current-password"})


class AdminLoginForm(ThrottledAuthenticationForm, AdminAuthenticationForm):
    """The operators' admin sign-in (staff only), throttled and audited like the console's."""


def mark_session_authenticated(request: HttpRequest) -> None:
    now = int(time.time())
    request.session[SESSION_AUTH_AT] = now
    request.session[SESSION_SEEN_AT] = now


class ConsoleLoginView(LoginView):
    template_name = "console/login.html"
    authentication_form = ConsoleLoginForm
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_valid(form)  # login(): a new session key and CSRF token
        mark_session_authenticated(self.request)
        return response


@require_POST
def console_logout(request: HttpRequest) -> HttpResponse:
    """Sign out (POST only, so a link or an image elsewhere cannot sign anyone out)."""
    user = request.user
    if user.is_authenticated:
        actor = Actor.for_user(user, ip=client_ip(request.META))
        _audit_auth(request, "auth.logout", actor=actor, user=user, details={"username": user.get_username()})
    logout(request)
    messages.info(request, "You are signed out.")
    return redirect("console:login")


# --- Session lifetime and console response headers ---------------------------------------------


class ConsoleSessionMiddleware:
    """Ends signed-in sessions that idled too long or are too old, on every non-API request; adds
    a strict Content-Security-Policy and `Cache-Control: no-store` to console pages."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_api_path(request.path):
            self._enforce_timeouts(request)
        response = self.get_response(request)
        if request.path.startswith("/console/"):
            response.headers.setdefault("Content-Security-Policy", CONSOLE_CSP)
            response.headers.setdefault("Cache-Control", "no-store")  # tenant data stays off shared disks
        return response

    @staticmethod
    def _enforce_timeouts(request: HttpRequest) -> None:
        if not request.user.is_authenticated:
            return
        session = request.session
        now = int(time.time())
        auth_at = session.get(SESSION_AUTH_AT)
        seen_at = session.get(SESSION_SEEN_AT)
        if not isinstance(auth_at, int) or not isinstance(seen_at, int):
            mark_session_authenticated(request)  # signed in some other way (admin, tests): start now
            return
        message = None
        if now - auth_at > settings.CONSOLE_ABSOLUTE_TIMEOUT_SECONDS:
            hours = round(settings.CONSOLE_ABSOLUTE_TIMEOUT_SECONDS / 3600, 1)
            message = f"Sessions last at most {hours:g} hours. Please sign in again."
        elif now - seen_at > settings.CONSOLE_IDLE_TIMEOUT_SECONDS:
            minutes = settings.CONSOLE_IDLE_TIMEOUT_SECONDS // 60
            message = f"You were signed out after {minutes} minutes without activity. Please sign in again."
        if message is not None:
            logger.info("console session ended user=%s", request.user.pk)
            logout(request)  # flushes the session; the view now sees an anonymous user
            messages.info(request, message)
            return
        if now - seen_at >= SEEN_RESOLUTION_SECONDS and not request.headers.get(BACKGROUND_HEADER):
            session[SESSION_SEEN_AT] = now
