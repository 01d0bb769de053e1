"""Console pages for a tenant's own settings: overview, quotas & policy, API keys, members.

Every view is guarded by `console_view` (404 for non-members and for roles not allowed) and makes
changes only through tenants.services, which validate and audit them; a service's refusal is
shown on the form, and a refused request changes nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.debug import sensitive_post_parameters

from realtime_platform.console import (
    ALL_ROLES,
    AUDIT_ROLES,
    MANAGE_ROLES,
    ROLE_DESCRIPTIONS,
    Console,
    console_view,
    once_token_consume,
    once_token_issue,
)
from realtime_platform.errors import ApplicationError, NotFound
from tenants.access import access_api_key, access_member, assignable_roles
from tenants.console_forms import (
    GRACE_CHOICES,
    LIMIT_LABELS,
    ApiKeyCreateForm,
    ApiKeyRotateForm,
    ApiKeySettingsForm,
    MemberAddForm,
    MemberRoleForm,
    PolicyForm,
    QuotaForm,
    UpstreamForm,
)
from tenants.models import (
    ApiKey,
    Membership,
    QuotaLimits,
    QuotaOverride,
    Role,
    SessionPolicy,
    UpstreamCredential,
)
from tenants.selectors import api_key_list, membership_list, tenant_limits, user_find
from tenants.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_settings_update,
    membership_add,
    membership_change_role,
    membership_remove,
    quota_override_update,
    session_policy_update,
    tenant_upstream_mode_set,
    upstream_credential_delete,
    upstream_credential_set,
)
from usage.models import Metric
from usage.services import quota_used, tenant_metric_limit

logger = logging.getLogger(__name__)


# --- Overview ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaBar:
    """One limit of the tenant and how much of it is used, in the unit people read."""

    label: str
    period: str
    used: Decimal
    limit: Decimal | None
    unit: str = ""

    @property
    def percent(self) -> int | None:
        if self.limit is None:
            return None
        if self.limit == 0:
            return 100
        return min(100, int(self.used * 100 / self.limit))

    @property
    def meter_low(self) -> str:
        return "" if self.limit is None else f"{self.limit * Decimal('0.8'):f}"

    @property
    def meter_high(self) -> str:
        return "" if self.limit is None else f"{self.limit * Decimal('0.95'):f}"

    @property
    def level(self) -> str:
        percent = self.percent
        if percent is None or percent < 80:
            return "ok"
        return "warn" if percent < 100 else "full"


_BAR_METRICS = (
    # metric, label, period, divisor (counter unit → shown unit), decimals, unit
    (Metric.SECRETS, "Client secrets", "today (UTC)", 1, 0, ""),
    (Metric.SESSIONS, "Concurrent relay sessions", "now", 1, 0, ""),
    (Metric.AUDIO_MS, "Audio", "this month", 60_000, 1, "min"),
    (Metric.TOKENS, "Tokens", "this month", 1, 0, ""),
    (Metric.COST_MICROUSD, "Spending", "this month", 1_000_000, 2, "USD"),
)


def quota_bars(console: Console) -> list[QuotaBar]:
    limits = tenant_limits(tenant=console.tenant)
    bars = []
    for metric, label, period, divisor, decimals, unit in _BAR_METRICS:
        used = quota_used(tenant=console.tenant, metric=metric)
        limit = tenant_metric_limit(metric, limits)
        quantum = Decimal(1).scaleb(-decimals)
        bars.append(
            QuotaBar(
                label=label,
                period=period,
                used=(Decimal(used) / divisor).quantize(quantum),
                limit=None if limit is None else (Decimal(limit) / divisor).quantize(quantum),
                unit=unit,
            )
        )
    return bars


@console_view(roles=ALL_ROLES, nav="overview", methods=("GET", "HEAD"))
def overview(request: HttpRequest, console: Console) -> HttpResponse:
    tenant = console.tenant
    context = {
        "bars": quota_bars(console),
        "policy": SessionPolicy.objects.filter(tenant=tenant).first(),
        "active_keys": api_key_list(tenant=tenant, include_revoked=False).count(),
        "members": membership_list(tenant=tenant).count(),
    }
    return console.render("tenants/console/overview.html", context)


@console_view(roles=ALL_ROLES, nav="overview", methods=("GET", "HEAD"))
def overview_quota_bars(request: HttpRequest, console: Console) -> HttpResponse:
    """The quota panel alone, which the overview re-fetches every 30 seconds (htmx)."""
    return console.render("tenants/console/_quota_bars.html", {"bars": quota_bars(console)})


# --- Quotas & policy ---------------------------------------------------------------------------


def _quotas_page(console: Console, **forms: Any) -> HttpResponse:
    """The page, with any of its forms replaced by a bound one to show its errors (Django's
    convention: a form with errors comes back as a 200, so browsers and logs treat it as a page)."""
    tenant = console.tenant
    override = QuotaOverride.objects.filter(tenant=tenant).first()
    policy = SessionPolicy.objects.get(tenant=tenant)
    limits = tenant_limits(tenant=tenant)
    rows = [
        {
            "label": LIMIT_LABELS[name],
            "plan": getattr(tenant.plan, name),
            "own": getattr(override, name) if override else None,
            "effective": getattr(limits, name),
        }
        for name in QuotaLimits.LIMIT_FIELDS
    ]
    quota_initial = {name: getattr(override, name) for name in QuotaLimits.LIMIT_FIELDS} if override else {}
    context = {
        "plan": tenant.plan,
        "rows": rows,
        "quota_form": forms.get("quota_form") or QuotaForm(tenant=tenant, initial=quota_initial),
        "policy_form": forms.get("policy_form") or PolicyForm(initial=PolicyForm.initial_from(policy)),
        "upstream_form": forms.get("upstream_form")
        or UpstreamForm(initial={"upstream_mode": tenant.upstream_mode}),
        "credential": UpstreamCredential.objects.filter(tenant=tenant).first(),
        "keys_with_limits": [
            key
            for key in api_key_list(tenant=tenant, include_revoked=False)
            if key.secrets_per_day is not None
            or key.concurrent_sessions is not None
            or key.cost_usd_per_month is not None
            or key.secret_kind
        ],
    }
    return console.render("tenants/console/quotas.html", context)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("GET", "HEAD"))
def quotas(request: HttpRequest, console: Console) -> HttpResponse:
    return _quotas_page(console)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
def quotas_limits_update(request: HttpRequest, console: Console) -> HttpResponse:
    form = QuotaForm(request.POST, tenant=console.tenant)
    if form.is_valid():
        try:
            quota_override_update(tenant=console.tenant, actor=console.actor, values=form.cleaned_data)
        except ApplicationError as exc:
            console.form_error(form, exc)
        else:
            messages.success(request, "Limits saved.")
            return console.redirect("quotas")
    return _quotas_page(console, quota_form=form)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
def quotas_policy_update(request: HttpRequest, console: Console) -> HttpResponse:
    form = PolicyForm(request.POST)
    if form.is_valid():
        try:
            session_policy_update(tenant=console.tenant, actor=console.actor, values=form.policy_values())
        except ApplicationError as exc:
            console.form_error(form, exc)
        else:
            messages.success(
                request, "Session policy saved. It applies to client secrets issued from now on."
            )
            return console.redirect("quotas")
    return _quotas_page(console, policy_form=form)


@sensitive_post_parameters("secret")  # the OpenAI key never reaches error reports
@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
def quotas_upstream_update(request: HttpRequest, console: Console) -> HttpResponse:
    form = UpstreamForm(request.POST)
    if form.is_valid():
        try:
            if form.cleaned_data["secret"]:
                upstream_credential_set(
                    tenant=console.tenant,
                    secret=form.cleaned_data["secret"],
                    actor=console.actor,
                    user=console.user,
                )
            tenant_upstream_mode_set(
                tenant=console.tenant, mode=form.cleaned_data["upstream_mode"], actor=console.actor
            )
        except ApplicationError as exc:
            console.form_error(form, exc)
        else:
            messages.success(request, "Upstream settings saved.")
            return console.redirect("quotas")
    return _quotas_page(console, upstream_form=form)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
def quotas_upstream_delete(request: HttpRequest, console: Console) -> HttpResponse:
    upstream_credential_delete(tenant=console.tenant, actor=console.actor)
    messages.success(request, "Your OpenAI key was deleted. Sessions use the platform's key.")
    return console.redirect("quotas")


# --- API keys ----------------------------------------------------------------------------------


def _keys_page(
    request: HttpRequest,
    console: Console,
    *,
    create_form: ApiKeyCreateForm | None = None,
) -> HttpResponse:
    keys = list(api_key_list(tenant=console.tenant).select_related("created_by", "rotated_from"))
    context: dict[str, Any] = {"keys": keys}
    if console.can_manage:
        # A fresh one-time token on every render, so a refused form can be corrected and sent again.
        once = once_token_issue(request)
        create_form = create_form or ApiKeyCreateForm()
        create_form.describe_tenant_limits(tenant_limits(tenant=console.tenant))
        context.update(create_form=create_form, once=once, grace_choices=GRACE_CHOICES)
    return console.render("tenants/console/keys.html", context)


def _already_submitted(request: HttpRequest, console: Console) -> HttpResponse:
    messages.warning(
        request,
        "That form was already sent, and the key it made is not shown again. "
        "If you did not copy it, revoke that key and make a new one.",
    )
    return console.redirect("keys")


@console_view(roles=AUDIT_ROLES, nav="keys", methods=("GET", "HEAD"))
def keys(request: HttpRequest, console: Console) -> HttpResponse:
    return _keys_page(request, console)


@console_view(roles=MANAGE_ROLES, nav="keys", methods=("POST",))
def key_create(request: HttpRequest, console: Console) -> HttpResponse:
    form = ApiKeyCreateForm(request.POST)
    if not form.is_valid():
        return _keys_page(request, console, create_form=form)
    if not once_token_consume(request, request.POST.get("once", "")):
        return _already_submitted(request, console)
    try:
        issued = api_key_create(
            tenant=console.tenant,
            name=form.cleaned_data["name"],
            scopes=form.scopes_in_order(),
            expires_at=form.expires_at(),
            created_by=console.user,
            actor=console.actor,
            secrets_per_day=form.cleaned_data["secrets_per_day"],
            concurrent_sessions=form.cleaned_data["concurrent_sessions"],
            cost_usd_per_month=form.cleaned_data["cost_usd_per_month"],
        )
    except ApplicationError as exc:
        console.form_error(form, exc)
        return _keys_page(request, console, create_form=form)
    logger.info("console key created tenant=%s prefix=%s", console.tenant.pk, issued.api_key.prefix)
    return console.render("tenants/console/key_secret.html", {"issued": issued, "rotated_from": None})


def _manageable_key(console: Console, key_id: int) -> ApiKey:
    try:
        return access_api_key(user=console.user, tenant_id=console.tenant.pk, key_id=key_id, manage=True)
    except NotFound as exc:
        raise Http404("No such key.") from exc


@console_view(roles=MANAGE_ROLES, nav="keys", methods=("POST",))
def key_rotate(request: HttpRequest, console: Console, key_id: int) -> HttpResponse:
    old = _manageable_key(console, key_id)
    form = ApiKeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose what happens to the old key.")
        return console.redirect("keys")
    if not once_token_consume(request, request.POST.get("once", "")):
        return _already_submitted(request, console)
    try:
        issued = api_key_rotate(
            api_key=old, actor=console.actor, grace_seconds=form.cleaned_data["grace_seconds"]
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return console.redirect("keys")
    old.refresh_from_db()
    return console.render("tenants/console/key_secret.html", {"issued": issued, "rotated_from": old})


@console_view(roles=MANAGE_ROLES, nav="keys", methods=("POST",))
def key_revoke(request: HttpRequest, console: Console, key_id: int) -> HttpResponse:
    api_key = _manageable_key(console, key_id)
    api_key_revoke(api_key=api_key, actor=console.actor)
    messages.success(
        request, f"Key “{api_key.name}” ({api_key.prefix}…) is revoked. It stops working at once."
    )
    return console.redirect("keys")


@console_view(roles=MANAGE_ROLES, nav="keys", methods=("GET", "HEAD", "POST"))
def key_settings(request: HttpRequest, console: Console, key_id: int) -> HttpResponse:
    api_key = _manageable_key(console, key_id)
    if request.method == "POST":
        form = ApiKeySettingsForm(request.POST)
        if form.is_valid():
            try:
                api_key_settings_update(api_key=api_key, actor=console.actor, values=form.cleaned_data)
            except ApplicationError as exc:
                console.form_error(form, exc)
            else:
                messages.success(request, f"Settings of “{api_key.name}” saved.")
                return console.redirect("keys")
    else:
        form = ApiKeySettingsForm(
            initial={
                "secrets_per_day": api_key.secrets_per_day,
                "concurrent_sessions": api_key.concurrent_sessions,
                "cost_usd_per_month": api_key.cost_usd_per_month,
                "secret_kind": api_key.secret_kind,
            }
        )
    form.describe_tenant_limits(tenant_limits(tenant=console.tenant))
    return console.render("tenants/console/key_settings.html", {"api_key": api_key, "form": form})


# --- Members -----------------------------------------------------------------------------------


def _members_page(console: Console, *, add_form: MemberAddForm | None = None) -> HttpResponse:
    roles = assignable_roles(manager_role=console.role)
    members = list(membership_list(tenant=console.tenant))
    rows = [
        {
            "membership": member,
            # admins manage everyone but owners (tenants.access.access_member)
            "manageable": console.can_manage and (console.is_owner or member.role != Role.OWNER),
            "role_form": MemberRoleForm(roles=roles, initial={"role": member.role}, prefix=f"m{member.pk}"),
        }
        for member in members
    ]
    context = {
        "rows": rows,
        "add_form": add_form or (MemberAddForm(roles=roles) if console.can_manage else None),
        "role_descriptions": [(Role(role).label, text) for role, text in ROLE_DESCRIPTIONS.items()],
    }
    return console.render("tenants/console/members.html", context)


def _manageable_member(console: Console, membership_id: int) -> Membership:
    try:
        return access_member(user=console.user, tenant_id=console.tenant.pk, membership_id=membership_id)
    except NotFound as exc:
        raise Http404("No such member.") from exc


@console_view(roles=AUDIT_ROLES, nav="members", methods=("GET", "HEAD"))
def members(request: HttpRequest, console: Console) -> HttpResponse:
    return _members_page(console)


@console_view(roles=MANAGE_ROLES, nav="members", methods=("POST",))
def member_add(request: HttpRequest, console: Console) -> HttpResponse:
    form = MemberAddForm(request.POST, roles=assignable_roles(manager_role=console.role))
    if form.is_valid():
        user = user_find(identifier=form.cleaned_data["identifier"])
        if user is None:
            form.add_error(
                "identifier",
                "No account has that username or email (or several share the email: use the username). "
                "Ask them to get an account from your platform operator first.",
            )
        else:
            try:
                membership_add(
                    tenant=console.tenant, user=user, role=form.cleaned_data["role"], actor=console.actor
                )
            except ApplicationError as exc:
                console.form_error(form, exc)
            else:
                messages.success(
                    request,
                    f"{user.get_username()} is now a member ({Role(form.cleaned_data['role']).label}).",
                )
                return console.redirect("members")
    return _members_page(console, add_form=form)


@console_view(roles=MANAGE_ROLES, nav="members", methods=("POST",))
def member_role(request: HttpRequest, console: Console, membership_id: int) -> HttpResponse:
    member = _manageable_member(console, membership_id)
    form = MemberRoleForm(
        request.POST, roles=assignable_roles(manager_role=console.role), prefix=f"m{member.pk}"
    )
    if not form.is_valid():
        messages.error(request, "You cannot give that role.")
        return console.redirect("members")
    role = form.cleaned_data["role"]
    try:
        membership_change_role(membership=member, role=role, actor=console.actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return console.redirect("members")
    messages.success(request, f"{member.user.get_username()} is now {Role(role).label}.")
    if member.user_id == console.user.pk and role not in MANAGE_ROLES:
        return console.redirect("overview")  # they just gave up managing this tenant
    return console.redirect("members")


@console_view(roles=MANAGE_ROLES, nav="members", methods=("POST",))
def member_remove(request: HttpRequest, console: Console, membership_id: int) -> HttpResponse:
    member = _manageable_member(console, membership_id)
    try:
        membership_remove(membership=member, actor=console.actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return console.redirect("members")
    messages.success(request, f"{member.user.get_username()} is no longer a member.")
    if member.user_id == console.user.pk:
        return redirect("console:home")  # they left this tenant
    return console.redirect("members")
