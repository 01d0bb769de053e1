"""The console's usage pages through the test client: the dashboard (series per local day or
hour, per key and model, totals, consumption, recent alerts) and the threshold-alert settings
(validated and audited by usage.alerts; the signing secret shown once). Who may open them is in
tenants/tests/test_console_permissions.py; the charts drawing is in tests/browser."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.actors import Actor
from audit.models import AuditEvent
from conftest import make_key
from realtime_platform import crypto
from tenants.models import Tenant
from tenants.services import quota_override_update
from usage.alerts import alert_settings_update, quota_alerts_evaluate
from usage.models import Metric
from usage.rollups import usage_rollup_run
from usage.selectors import usage_local_today
from usage.services import quota_reserve
from usage.tests.helpers import record

pytestmark = pytest.mark.django_db


def url(tenant, name, *args):
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def chart_of(response) -> dict:
    """The data the page hands its charts, read back from the page as the script reads it."""
    body = response.content.decode()
    found = re.search(r'<script id="usage-data" type="application/json">(.*?)</script>', body, re.S)
    assert found, "the page carries no chart data"
    return json.loads(found.group(1))


# --- Dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_shows_the_last_seven_local_days(viewer, tenant):
    tenant.time_zone = "Pacific/Auckland"  # UTC+13 in December
    tenant.save()
    key = make_key(tenant, name="kiosk").api_key
    zone = ZoneInfo("Pacific/Auckland")
    local_today = usage_local_today(tenant=tenant)
    # 00:30 yesterday in Auckland is the day before in UTC: it counts on Auckland's day
    moment = datetime.combine(local_today - timedelta(days=1), time(0, 30), tzinfo=zone)
    assert moment.astimezone(UTC).date() != moment.date()
    record(tenant, moment, api_key=key, input_text=1000, output_audio=50, audio_in_ms=90_000)
    record(tenant, moment, api_key=key, kind="session_ended")
    record(tenant, moment, api_key=key, kind="secret_issued")
    usage_rollup_run()

    response = signed_in(viewer).get(url(tenant, "dashboard"))
    assert response.status_code == 200
    chart = chart_of(response)
    days = [(local_today - timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    assert chart["labels"] == days
    at = days.index((local_today - timedelta(days=1)).isoformat())
    assert chart["tokens"]["Input text"][at] == 1000
    assert chart["tokens"]["Output audio"][at] == 50
    assert chart["audio"]["Heard (input)"][at] == 1.5
    assert chart["activity"]["Sessions"][at] == 1
    assert chart["activity"]["Client secrets"][at] == 1
    assert chart["cost"][at] > 0
    assert sum(chart["tokens"]["Input text"]) == 1000
    body = response.content.decode()
    assert "Days and hours are in Pacific/Auckland" in body
    assert "<dt>Tokens</dt><dd>1,050</dd>" in body
    assert "<meter" in body  # consumption against limits, as on the overview
    assert 'aria-labelledby="chart-tokens-title"' in body
    assert "vendor/chartjs-4.6.1/chart.umd.min.js" in body


def test_hourly_series_per_key_and_model(owner, tenant):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    hour_ago = timezone.now() - timedelta(hours=1)
    record(tenant, hour_ago, api_key=kiosk, model="gpt-realtime", input_text=100)
    record(tenant, hour_ago, api_key=backend, model="gpt-realtime-mini", input_text=7)
    usage_rollup_run()
    client = signed_in(owner)

    def tokens(**params) -> int:
        response = client.get(url(tenant, "dashboard"), {"range": "24h", **params})
        assert response.status_code == 200
        chart = chart_of(response)
        assert len(chart["labels"]) == 24
        assert chart["granularity"] == "hour"
        return sum(chart["tokens"]["Input text"])

    assert tokens() == 107
    assert tokens(api_key=str(kiosk.pk)) == 100
    assert tokens(model="gpt-realtime-mini") == 7
    assert tokens(api_key=str(kiosk.pk), model="gpt-realtime-mini") == 0
    response = client.get(url(tenant, "dashboard"), {"range": "30d"})
    breakdowns = dict(response.context["breakdowns"])
    assert [(label, t.input_tokens) for label, t in breakdowns["By API key"]] == [
        ("kiosk", 100),
        ("backend", 7),
    ]
    assert [label for label, _ in breakdowns["By model"]] == ["gpt-realtime", "gpt-realtime-mini"]
    assert len(chart_of(response)["labels"]) == 30


def test_days_of_ones_choosing_and_what_is_refused(viewer, tenant, other_tenant):
    record(tenant, datetime(2026, 2, 10, 12, tzinfo=UTC), input_text=5)
    usage_rollup_run()
    client = signed_in(viewer)
    response = client.get(
        url(tenant, "dashboard"), {"range": "custom", "first_day": "2026-02-09", "last_day": "2026-02-11"}
    )
    chart = chart_of(response)
    assert chart["labels"] == ["2026-02-09", "2026-02-10", "2026-02-11"]
    assert chart["tokens"]["Input text"] == [0, 5, 0]

    for params, errors in [
        ({"range": "custom"}, {"first_day", "last_day"}),
        ({"range": "custom", "first_day": "2026-02-11", "last_day": "2026-02-09"}, {"last_day"}),
        ({"range": "custom", "first_day": "2024-01-01", "last_day": "2026-02-09"}, {"first_day"}),
        ({"range": "forever"}, {"range"}),
        ({"api_key": str(make_key(other_tenant).api_key.pk)}, {"api_key"}),  # not one of this tenant's keys
    ]:
        response = client.get(url(tenant, "dashboard"), params)
        assert response.status_code == 200
        assert set(response.context["form"].errors) == errors, params
        assert "chart" not in response.context
        assert 'id="usage-data"' not in response.content.decode()


def test_recent_alerts_are_shown_to_everyone_and_settings_only_to_managers(viewer, owner, tenant):
    quota_override_update(tenant=tenant, actor=Actor.system("tests"), values={"tokens_per_month": 1000})
    alert_settings_update(
        tenant=tenant, actor=Actor.system("tests"), emails=["ops@example.com"], thresholds=[50, 80]
    )
    tenant.refresh_from_db()
    quota_reserve(tenant=tenant, metric=Metric.TOKENS, amount=850)
    assert quota_alerts_evaluate() == 2
    body = signed_in(viewer).get(url(tenant, "dashboard")).content.decode()
    assert "Tokens per month" in body
    assert "850 of 1,000" in body
    assert url(tenant, "alerts") not in body
    assert url(tenant, "alerts") in signed_in(owner).get(url(tenant, "dashboard")).content.decode()
    page = signed_in(owner).get(url(tenant, "alerts")).content.decode()
    assert 'Email: <span class="badge delivery-pending">Pending</span>' in page  # the 80% one is sent
    assert "not sent: a higher threshold was crossed at the same time" in page  # the 50% one is not


def test_the_dashboard_reads_a_fixed_number_of_queries(viewer, tenant, django_assert_max_num_queries):
    keys = [make_key(tenant, name=f"key {i}").api_key for i in range(4)]
    for n in range(40):
        record(tenant, timezone.now() - timedelta(hours=n), api_key=keys[n % 4], model=f"model-{n % 3}")
    usage_rollup_run()
    client = signed_in(viewer)
    client.get(url(tenant, "dashboard"))
    with django_assert_max_num_queries(18):
        client.get(url(tenant, "dashboard"), {"range": "90d"})


# --- Alert settings ----------------------------------------------------------------------------


def test_saving_alert_settings_shows_the_new_signing_secret_once(admin_user, tenant):
    client = signed_in(admin_user)
    response = client.post(
        url(tenant, "alerts-settings"),
        {
            "thresholds": "80, 50 100",
            "webhook_url": "https://hooks.example.com/quota",
            "emails": "a@example.com\nb@example.com",
        },
    )
    assert response.status_code == 200
    secret = re.search(r'value="(whsec_[^"]+)"', response.content.decode()).group(1)
    assert "shown only once" in response.content.decode()
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.alert_thresholds == [50, 80, 100]
    assert tenant.alert_emails == ["a@example.com", "b@example.com"]
    assert crypto.decrypt(tenant.alert_webhook_secret_encrypted) == secret
    assert secret not in tenant.alert_webhook_secret_encrypted
    event = AuditEvent.objects.get(action="alert.settings_changed")
    assert event.actor_label == "alan"
    assert secret not in json.dumps(event.details)

    page = client.get(url(tenant, "alerts")).content.decode()
    assert secret not in page
    assert "Rotate the signing secret" in page
    # sending the same settings again (a reload) makes no second secret
    again = client.post(
        url(tenant, "alerts-settings"),
        {
            "thresholds": "50, 80, 100",
            "webhook_url": "https://hooks.example.com/quota",
            "emails": "a@example.com\nb@example.com",
        },
    )
    assert again.status_code == 302
    assert crypto.decrypt(Tenant.objects.get(pk=tenant.pk).alert_webhook_secret_encrypted) == secret


def test_refused_alert_settings_are_explained_on_their_field_and_change_nothing(owner, tenant):
    client = signed_in(owner)
    before = (tenant.alert_thresholds, tenant.alert_webhook_url, tenant.alert_emails)
    for body, field, message in [
        ({"thresholds": "50, 150"}, "thresholds", "Each threshold must be a whole percentage from 1 to 100."),
        ({"thresholds": "half"}, "thresholds", "Use whole percentages"),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url", "webhook_url must be an absolute https URL."),
        ({"webhook_url": "https://10.0.0.1/x"}, "webhook_url", "webhook_url must point to a public address."),
        (
            {"emails": "ops@example.com\nnot-an-address"},
            "emails",
            "'not-an-address' is not a valid email address.",
        ),
    ]:
        response = client.post(url(tenant, "alerts-settings"), {"thresholds": "50", **body})
        assert response.status_code == 200
        errors = response.context["form"].errors
        assert list(errors) == [field], body
        assert message in errors[field][0]
    tenant.refresh_from_db()
    assert (tenant.alert_thresholds, tenant.alert_webhook_url, tenant.alert_emails) == before
    assert not AuditEvent.objects.filter(action="alert.settings_changed").exists()


def test_rotating_the_signing_secret_shows_the_new_one_once_and_a_reload_rotates_nothing(owner, tenant):
    alert_settings_update(
        tenant=tenant, actor=Actor.system("tests"), webhook_url="https://hooks.example.com/q"
    )
    tenant.refresh_from_db()
    old = crypto.decrypt(tenant.alert_webhook_secret_encrypted)
    client = signed_in(owner)
    once = client.get(url(tenant, "alerts")).context["once"]
    response = client.post(url(tenant, "alerts-rotate"), {"once": once})
    new = re.search(r'value="(whsec_[^"]+)"', response.content.decode()).group(1)
    assert new != old
    tenant.refresh_from_db()
    assert crypto.decrypt(tenant.alert_webhook_secret_encrypted) == new
    assert AuditEvent.objects.get(action="alert.secret_rotated").actor_label == "alice"

    reload = client.post(url(tenant, "alerts-rotate"), {"once": once})
    assert reload.status_code == 302
    tenant.refresh_from_db()
    assert crypto.decrypt(tenant.alert_webhook_secret_encrypted) == new
    assert AuditEvent.objects.filter(action="alert.secret_rotated").count() == 1
    assert "already sent" in client.get(reload["Location"]).content.decode()
