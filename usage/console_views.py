"""Console pages of usage: the dashboard (charts over time in the tenant's zone, consumption
against limits, recent threshold alerts) for every member, and the threshold-alert settings
(webhook, emails, thresholds, the signing secret shown once) for owners and admins.

Reads go through usage.selectors (rollups, so the charts lag by at most one rollup interval);
changes through usage.alerts, which validates and audits them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from realtime_platform.console import (
    ALL_ROLES,
    MANAGE_ROLES,
    Console,
    console_view,
    once_token_consume,
    once_token_issue,
)
from realtime_platform.errors import ApplicationError, BadRequest
from tenants.console_views import quota_bars
from tenants.selectors import api_key_list
from usage.alerts import alert_settings_get, alert_settings_update, alert_webhook_secret_rotate
from usage.console_forms import AlertSettingsForm, DashboardForm, DashboardPeriod
from usage.models import Metric, QuotaAlert
from usage.selectors import (
    GroupBy,
    UsageSeries,
    display_amount,
    quota_alert_list,
    usage_daily_series,
    usage_hourly_series,
    usage_local_today,
    usage_models_seen,
)

logger = logging.getLogger(__name__)

DASHBOARD_FIELDS = ("range", "first_day", "last_day", "api_key", "model")
QUOTA_LABELS = {
    Metric.SECRETS: ("Client secrets per day", ""),
    Metric.AUDIO_MS: ("Audio minutes per month", "min"),
    Metric.TOKENS: ("Tokens per month", ""),
    Metric.COST_MICROUSD: ("Spending per month", "USD"),
    Metric.SESSIONS: ("Concurrent sessions", ""),
}


# --- Dashboard -------------------------------------------------------------------------------


def _series(
    console: Console, period: DashboardPeriod, *, group_by: GroupBy | None = None, **filters: Any
) -> list[UsageSeries]:
    if period.granularity == "hour":
        assert period.since is not None
        assert period.until is not None
        return usage_hourly_series(
            tenant=console.tenant, since=period.since, until=period.until, group_by=group_by, **filters
        )
    assert period.first_day is not None
    assert period.last_day is not None
    return usage_daily_series(
        tenant=console.tenant,
        first_day=period.first_day,
        last_day=period.last_day,
        group_by=group_by,
        **filters,
    )


def chart_data(series: UsageSeries, granularity: str) -> dict[str, Any]:
    """What static/console/dashboard.js draws: labels and one list of numbers per dataset."""
    points = [point.totals for point in series.points]
    return {
        "granularity": granularity,
        "labels": [point.label for point in series.points],
        "tokens": {
            "Input text": [t.input_text_tokens for t in points],
            "Input audio": [t.input_audio_tokens for t in points],
            "Input image": [t.input_image_tokens for t in points],
            "Output text": [t.output_text_tokens for t in points],
            "Output audio": [t.output_audio_tokens for t in points],
        },
        "audio": {
            "Heard (input)": [round(t.audio_in_ms / 60_000, 2) for t in points],
            "Spoken (output)": [round(t.audio_out_ms / 60_000, 2) for t in points],
        },
        "cost": [float(t.cost_usd.quantize(Decimal("0.0001"))) for t in points],
        "activity": {
            "Sessions": [t.sessions for t in points],
            "Client secrets": [t.secrets for t in points],
        },
    }


@dataclass(frozen=True)
class AlertRow:
    alert: QuotaAlert
    label: str
    unit: str
    used: Decimal
    limit: Decimal


def _alert_rows(alerts: list[QuotaAlert]) -> list[AlertRow]:
    rows = []
    for alert in alerts:
        label, unit = QUOTA_LABELS.get(Metric(alert.metric), (alert.metric, ""))
        rows.append(
            AlertRow(
                alert=alert,
                label=label,
                unit=unit,
                used=display_amount(alert.metric, alert.used),
                limit=display_amount(alert.metric, alert.limit),
            )
        )
    return rows


@console_view(roles=ALL_ROLES, nav="dashboard", methods=("GET", "HEAD"))
def dashboard(request: HttpRequest, console: Console) -> HttpResponse:
    tenant = console.tenant
    bound = any(request.GET.get(name) for name in DASHBOARD_FIELDS)
    form = DashboardForm(
        request.GET if bound else None,
        api_keys=list(api_key_list(tenant=tenant)),
        models=usage_models_seen(tenant=tenant),
    )
    context: dict[str, Any] = {"form": form, "bars": quota_bars(console)}
    if not bound or form.is_valid():
        now = timezone.now()
        period = form.period(today=usage_local_today(tenant=tenant, now=now), now=now)
        filters = {
            "api_key_id": form.cleaned_data.get("api_key") if bound else None,
            "model": (form.cleaned_data.get("model") or None) if bound else None,
        }
        try:
            (total,) = _series(console, period, **filters)
            by_key = _series(console, period, group_by="api_key", **filters)
            by_model = _series(console, period, group_by="model", **filters)
        except BadRequest as exc:  # the selectors' own bounds
            console.form_error(form, exc)
        else:
            context.update(
                period=period,
                chart=chart_data(total, period.granularity),
                points=total.points,
                totals=total.totals,
                filtered=any(filters.values()),
                breakdowns=[
                    ("By API key", [(s.label, s.totals) for s in by_key]),
                    ("By model", [(s.label, s.totals) for s in by_model]),
                ],
            )
    context["alerts"] = _alert_rows(quota_alert_list(tenant=tenant, limit=10))
    return console.render("usage/console/dashboard.html", context)


# --- Threshold alerts --------------------------------------------------------------------------


def _alerts_page(
    request: HttpRequest, console: Console, *, form: AlertSettingsForm | None = None
) -> HttpResponse:
    current = alert_settings_get(tenant=console.tenant)
    if form is None:
        form = AlertSettingsForm(
            initial={
                "thresholds": current.thresholds,
                "webhook_url": current.webhook_url,
                "emails": current.emails,
            }
        )
    context = {
        "form": form,
        "current": current,
        "once": once_token_issue(request),
        "alerts": _alert_rows(quota_alert_list(tenant=console.tenant, limit=20)),
    }
    return console.render("usage/console/alerts.html", context)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("GET", "HEAD"))
def alerts(request: HttpRequest, console: Console) -> HttpResponse:
    return _alerts_page(request, console)


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
@sensitive_variables("change")  # inside the guard: it hides the locals of the function it wraps
def alerts_settings_update(request: HttpRequest, console: Console) -> HttpResponse:
    form = AlertSettingsForm(request.POST)
    if not form.is_valid():
        return _alerts_page(request, console, form=form)
    try:
        change = alert_settings_update(
            tenant=console.tenant,
            actor=console.actor,
            webhook_url=form.cleaned_data["webhook_url"],
            emails=form.cleaned_data["emails"],
            thresholds=form.cleaned_data["thresholds"],
        )
    except ApplicationError as exc:
        console.form_error(form, exc)
        return _alerts_page(request, console, form=form)
    if change.webhook_secret is not None:  # the first webhook: its signing secret, this once
        return console.render(
            "usage/console/alert_secret.html", {"secret": change.webhook_secret, "new": True}
        )
    messages.success(request, "Alert settings saved.")
    return console.redirect("alerts")


@console_view(roles=MANAGE_ROLES, nav="quotas", methods=("POST",))
@sensitive_variables("secret")
def alerts_secret_rotate(request: HttpRequest, console: Console) -> HttpResponse:
    if not once_token_consume(request, request.POST.get("once", "")):
        messages.warning(
            request,
            "That form was already sent, and the secret it made is not shown again. "
            "If you did not copy it, rotate it once more.",
        )
        return console.redirect("alerts")
    secret = alert_webhook_secret_rotate(tenant=console.tenant, actor=console.actor)
    logger.info("console alert secret rotated tenant=%s", console.tenant.pk)
    return console.render("usage/console/alert_secret.html", {"secret": secret, "new": False})
