"""The tenant console's framework: one guard for every per-tenant page, the navigation, and the
helpers pages share (rendering, service errors as form messages, show-once secrets).

Adding a page (say the audit viewer, in the audit app):

1. The view, in `audit/console_views.py`, guarded by `console_view` with the roles that may open
   it and the menu entry it belongs to. It receives the request and a `Console`: the tenant, the
   user's membership (`role`, `can_manage`), `actor` for the services it calls, `url(name, *args)`
   and `redirect(name, *args)` for console URLs, and `render(template, context)`:

       @console_view(roles=AUDIT_ROLES, nav="audit", methods=("GET", "HEAD"))
       def audit_list(request: HttpRequest, console: Console) -> HttpResponse:
           events = audit_event_list(tenant=console.tenant, ...)
           return console.render("audit/console/list.html", {"events": events})

   Actions are separate POST-only views with the roles allowed to act (usually MANAGE_ROLES).
   A service's ApplicationError goes on the form with `console.form_error(form, exc)`, or into
   `messages.error(request, exc.message)` before redirecting back. Objects inside the tenant come
   through an `access_*` guard or a tenant-scoped selector; turn NotFound into Http404.
2. The URLs, in `audit/console_urls.py` (plain `urlpatterns`, no `app_name`), included under
   `<slug:tenant_slug>/audit/` in `realtime_platform/console_urls.py`; names join the "console"
   namespace (`{% url 'console:audit' console.tenant.slug %}`).
3. One `NavItem` in `NAV` below, with the same roles as the guard (a test checks they match).
4. The template, `audit/templates/audit/console/list.html`, extends `console/base.html` and fills
   `page_title` and `content` (and `extra_scripts` for page scripts). Forms subclass `ConsoleForm`
   and render with `{% include "console/_form_fields.html" %}`.
5. No inline `<script>` or `style=""`: console pages carry a strict Content-Security-Policy. Put
   scripts in static files and hand them data with `{{ data|json_script:"id" }}`; Chart.js is at
   `{% static 'vendor/chartjs-4.6.1/chart.umd.min.js' %}`. Pages that poll (htmx `hx-trigger=
   "every 30s"`) send `hx-headers='{"X-Console-Background": "1"}'` so polling does not count as
   activity for the idle timeout; `is_htmx(request)` tells a fragment request from a page load.
   Destructive buttons sit in a `<form data-confirm="Question?">`; `data-copy="#id"` buttons copy.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property, wraps
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec
from zoneinfo import ZoneInfo

from django import forms
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from audit.actors import Actor
from realtime_platform.context import tenant_id_var
from realtime_platform.errors import ApplicationError, NotFound
from realtime_platform.http import client_ip
from tenants.access import access_membership
from tenants.models import MANAGER_ROLES, Membership, Role, Tenant
from tenants.selectors import membership_list_for_user, tenant_get
from usage.rollups import zone_of

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# Who may do what. Pages pick one of these for `console_view(roles=...)`.
ALL_ROLES: frozenset[str] = frozenset(Role.values)  # dashboards and the overview
MANAGE_ROLES: frozenset[str] = frozenset(MANAGER_ROLES)  # every change: keys, limits, policy, members
AUDIT_ROLES: frozenset[str] = frozenset({Role.OWNER, Role.ADMIN, Role.COMPLIANCE})  # audit, exports, reviews

ROLE_DESCRIPTIONS = {
    Role.OWNER: "Everything an admin can do, and manage owners.",
    Role.ADMIN: (
        "Manage API keys, limits, session policy, alerts and members (except owners); revoke client "
        "secrets and end live sessions."
    ),
    Role.COMPLIANCE: (
        "Read and export the audit trail, and read usage, API keys, client secrets, live sessions and "
        "members; change nothing."
    ),
    Role.VIEWER: "Read the overview and the usage dashboard.",
}


@dataclass(frozen=True)
class NavItem:
    key: str  # what a view passes as `console_view(nav=...)` to mark itself current
    label: str
    url_name: str  # a URL name in the "console" namespace taking the tenant slug
    roles: frozenset[str]


# The console's menu, in order. A page appears only to the roles that may open it. To add a page:
# add its URL to the app's console_urls.py, its view with `console_view(roles=R, nav="key")`, and
# one NavItem here with the same roles.
NAV: tuple[NavItem, ...] = (
    NavItem("overview", "Overview", "console:overview", ALL_ROLES),
    NavItem("dashboard", "Usage", "console:dashboard", ALL_ROLES),
    NavItem("quotas", "Quotas & policy", "console:quotas", MANAGE_ROLES),
    NavItem("keys", "API keys", "console:keys", AUDIT_ROLES),
    NavItem("secrets", "Client secrets", "console:secrets", AUDIT_ROLES),
    NavItem("sessions", "Live sessions", "console:sessions", AUDIT_ROLES),
    NavItem("members", "Members", "console:members", AUDIT_ROLES),
    NavItem("audit", "Audit trail", "console:audit", AUDIT_ROLES),
)


@dataclass
class Console:
    """What a console page knows about who is asking, for which tenant."""

    request: HttpRequest
    tenant: Tenant
    membership: Membership
    nav_key: str = ""

    @property
    def user(self) -> User:
        return self.request.user  # type: ignore[return-value]

    @property
    def role(self) -> str:
        return self.membership.role

    @property
    def role_label(self) -> str:
        return Role(self.role).label

    @cached_property
    def time_zone(self) -> ZoneInfo:
        """The tenant's zone: console pages show times in it and read typed times in it."""
        return zone_of(self.tenant.time_zone)  # as usage rollups read it: UTC if unknown

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGE_ROLES

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER

    def allows(self, roles: Iterable[str]) -> bool:
        return self.role in set(roles)

    @cached_property
    def actor(self) -> Actor:
        """Who to name in audit records of changes made from this request."""
        return Actor.for_user(self.user, ip=client_ip(self.request.META))

    def url(self, name: str, *args: Any) -> str:
        return reverse(f"console:{name}", args=[self.tenant.slug, *args])

    def redirect(self, name: str, *args: Any) -> HttpResponseRedirect:
        return HttpResponseRedirect(self.url(name, *args))

    @cached_property
    def nav(self) -> list[dict[str, Any]]:
        return [
            {
                "key": item.key,
                "label": item.label,
                "url": reverse(item.url_name, args=[self.tenant.slug]),
                "current": item.key == self.nav_key,
            }
            for item in NAV
            if self.role in item.roles
        ]

    @cached_property
    def memberships(self) -> list[Membership]:
        """All the user's tenants, for the switcher."""
        return list(membership_list_for_user(user=self.user))

    def render(
        self, template: str, context: dict[str, Any] | None = None, *, status: int = 200
    ) -> HttpResponse:
        return render(self.request, template, {"console": self, **(context or {})}, status=status)

    @staticmethod
    def form_error(form: forms.Form, exc: ApplicationError) -> None:
        """Show a service's refusal on the form: on the field it names, else above the form."""
        param = exc.param if exc.param in form.fields else None
        form.add_error(param, exc.message)


class LocalDateTimeInput(forms.DateTimeInput):
    """The browser's date-and-time picker. Its value is a wall-clock time with no zone, which a
    DateTimeField reads in the current zone: on console pages, the tenant's."""

    input_type = "datetime-local"

    def __init__(self) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M")


class ConsoleForm(forms.Form):
    """Base of console forms: labels without a trailing colon, and optional named groups of fields
    (`fieldsets = [("Title", ("field", ...)), ...]`) that `console/_form_fields.html` renders as
    <fieldset>s; fields in no group come first."""

    fieldsets: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def grouped_fields(self) -> list[tuple[str, list[forms.BoundField]]]:
        grouped = {name for _, names in self.fieldsets for name in names}
        loose = [self[name] for name in self.fields if name not in grouped and not self[name].is_hidden]
        groups = [("", loose)] if loose else []
        for title, names in self.fieldsets:
            groups.append((title, [self[name] for name in names if name in self.fields]))
        return groups


P = ParamSpec("P")
ConsolePage = Callable[Concatenate[HttpRequest, Console, P], HttpResponseBase]  # streamed downloads too
GuardedPage = Callable[..., HttpResponseBase]


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _to_login(request: HttpRequest) -> HttpResponse:
    if is_htmx(request):
        # htmx would swap the login page into the fragment; tell it to load the page instead.
        response = HttpResponse(status=401)
        response["HX-Redirect"] = reverse("console:login")
        return response
    return redirect_to_login(request.get_full_path())


def console_view(
    *, roles: frozenset[str] = ALL_ROLES, nav: str = "", methods: tuple[str, ...] = ("GET", "HEAD", "POST")
) -> Callable[[ConsolePage[P]], GuardedPage]:
    """Guard a per-tenant console page.

    Cases, in order: not signed in → the login page (then back here); unknown tenant slug, not a
    member, or a role not in `roles` → 404, the same page an unknown URL gets, so nobody learns
    which tenants exist; a method not in `methods` → 405. Otherwise the view runs with a Console,
    in the tenant's time zone (templates show times in it, forms read typed times in it).
    """

    def decorate(view: ConsolePage[P]) -> GuardedPage:
        @wraps(view)
        def guarded(
            request: HttpRequest, tenant_slug: str, *args: P.args, **kwargs: P.kwargs
        ) -> HttpResponseBase:
            if not request.user.is_authenticated:
                return _to_login(request)
            tenant = tenant_get(slug=tenant_slug)
            if tenant is None:
                raise Http404("No such tenant.")
            try:
                membership = access_membership(user=request.user, tenant_id=tenant.pk, roles=roles)
            except NotFound as exc:
                raise Http404("No such tenant.") from exc
            if request.method not in methods:
                return HttpResponseNotAllowed(methods)
            tenant_id_var.set(str(tenant.pk))
            membership.tenant = tenant  # with its plan already loaded
            console = Console(request=request, tenant=tenant, membership=membership, nav_key=nav)
            with timezone.override(console.time_zone):
                return view(request, console, *args, **kwargs)

        guarded.console_roles = roles  # type: ignore[attr-defined]  # read by the permission tests
        guarded.console_methods = methods  # type: ignore[attr-defined]  # read by the cross-tenant matrix
        return guarded

    return decorate


@login_required
def console_home(request: HttpRequest) -> HttpResponse:
    """`/console/`: the user's tenants, or straight to the only one."""
    memberships = list(membership_list_for_user(user=request.user))
    if len(memberships) == 1:
        return redirect("console:overview", memberships[0].tenant.slug)
    return render(request, "console/home.html", {"memberships": memberships})


# --- Show-once pages ---------------------------------------------------------------------------
# A page that shows a secret (a new API key) is the response to the POST that made it, never
# stored anywhere to be shown again. Reloading it would POST again and make a second secret, so
# each such form carries a one-time token: a repeated POST finds it spent and makes nothing.

_ONCE_SESSION_KEY = "console_once_tokens"
_ONCE_KEEP = 20


def once_token_issue(request: HttpRequest) -> str:
    token = secrets.token_urlsafe(16)
    tokens = list(request.session.get(_ONCE_SESSION_KEY, []))[-(_ONCE_KEEP - 1) :]
    request.session[_ONCE_SESSION_KEY] = [*tokens, token]
    return token


def once_token_consume(request: HttpRequest, token: str) -> bool:
    """True the first time a token issued to this session comes back; False ever after."""
    tokens = list(request.session.get(_ONCE_SESSION_KEY, []))
    if not token or token not in tokens:
        return False
    tokens.remove(token)
    request.session[_ONCE_SESSION_KEY] = tokens
    return True
