"""The usage dashboard in a real browser: the charts draw (Chart.js instances holding the
figures, pixels on the canvas, a bar where there was usage), the period and key filters redraw
them, and an admin sets threshold alerts and gets the webhook signing secret once."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from conftest import make_key
from tenants.models import Tenant
from usage.rollups import usage_rollup_run
from usage.tests.helpers import record

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHART_STATE = """(id) => {
    const canvas = document.getElementById(id);
    const chart = Chart.getChart(canvas);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] > 0) { painted += 1; } }
    return {
        labels: chart.data.labels,
        sums: Object.fromEntries(chart.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)])),
        heights: chart.getDatasetMeta(0).data.map(bar => Math.round(bar.height || 0)),
        painted: painted,
        size: canvas.width * canvas.height,
    };
}"""


def test_see_the_dashboard_chart_render(sign_in_as, viewer, tenant):
    kiosk = make_key(tenant, name="kiosk").api_key
    backend = make_key(tenant, name="backend").api_key
    now = timezone.now()
    record(
        tenant, now - timedelta(days=2), api_key=kiosk, input_text=4000, output_audio=900, audio_in_ms=120_000
    )
    record(tenant, now - timedelta(hours=1), api_key=backend, input_text=1500, output_audio=300)
    usage_rollup_run()

    console_page = sign_in_as(viewer)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/")
    page.get_by_role("navigation", name="Console sections").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", name="Usage", level=1)).to_be_visible()
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-tokens'))")
    tokens = page.evaluate(CHART_STATE, "chart-tokens")
    assert len(tokens["labels"]) == 7
    assert tokens["sums"]["Input text"] == 5500
    assert tokens["sums"]["Output audio"] == 1200
    assert tokens["painted"] > tokens["size"] // 50  # axes, labels and bars: the canvas is drawn on
    days_with_usage = [tokens["labels"][i] for i, h in enumerate(tokens["heights"]) if h > 0]
    expected = sorted(
        {(now - timedelta(days=2)).date().isoformat(), (now - timedelta(hours=1)).date().isoformat()}
    )
    assert days_with_usage == expected  # bars on the days with usage, nothing elsewhere
    audio = page.evaluate(CHART_STATE, "chart-audio")
    assert audio["sums"]["Heard (input)"] == 2
    for chart in ("chart-cost", "chart-activity"):
        assert page.evaluate(CHART_STATE, chart)["painted"] > 0
    console_page.screenshot("dashboard")
    console_page.assert_accessible()

    form = page.get_by_role("form", name="Show")
    form.get_by_label("Period").select_option("24h")
    form.get_by_label("API key").select_option(label=f"backend ({backend.prefix}…)")
    form.get_by_role("button", name="Show usage").click()
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-tokens'))")
    hourly = page.evaluate(CHART_STATE, "chart-tokens")
    assert len(hourly["labels"]) == 24
    assert hourly["sums"]["Input text"] == 1500
    assert [i for i, h in enumerate(hourly["heights"]) if h > 0] in ([22], [23])  # an hour ago
    page.get_by_text("The figures as a table").click()
    expect(page.get_by_role("table", name="Usage per hour")).to_be_visible()
    console_page.assert_accessible()
    console_page.assert_no_errors()


def test_an_admin_sets_threshold_alerts_and_copies_the_signing_secret(sign_in_as, admin_user, tenant):
    console_page = sign_in_as(admin_user)
    page = console_page.page
    console_page.goto(f"/console/{tenant.slug}/usage/")
    page.get_by_role("link", name="Alert settings").click()
    form = page.get_by_role("form", name="Settings")
    form.get_by_label("Thresholds (%)").fill("50, 80, 120")
    form.get_by_label("Webhook URL").fill("https://hooks.example.com/quota")
    form.get_by_label("Email recipients").fill("ops@example.com")
    form.get_by_role("button", name="Save alert settings").click()
    expect(page.get_by_text("Each threshold must be a whole percentage from 1 to 100.")).to_be_visible()
    console_page.assert_accessible()
    page.get_by_role("form", name="Settings").get_by_label("Thresholds (%)").fill("50, 80, 100")
    page.get_by_role("form", name="Settings").get_by_role("button", name="Save alert settings").click()

    expect(page.get_by_role("heading", name="Alert settings saved")).to_be_visible()
    secret = page.get_by_label("Webhook signing secret").input_value()
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    page.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    console_page.screenshot("alert-secret")
    console_page.assert_accessible()
    page.get_by_role("link", name=re.compile("back to alert settings")).click()
    assert secret not in page.content()
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.alert_thresholds == [50, 80, 100]
    assert tenant.alert_emails == ["ops@example.com"]
    console_page.screenshot("alerts")
    console_page.assert_accessible()
    page.get_by_role("button", name="Rotate the signing secret").click()  # confirm() is accepted
    expect(page.get_by_role("heading", name="Signing secret rotated")).to_be_visible()
    assert page.get_by_label("Webhook signing secret").input_value() != secret
    console_page.assert_no_errors()
