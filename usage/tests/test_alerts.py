from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from audit.actors import Actor
from audit.models import AuditEvent
from realtime_platform import crypto
from realtime_platform.errors import BadRequest
from tenants.models import Tenant
from tenants.services import quota_override_update
from usage.alerts import (
    alert_deliveries_send,
    alert_settings_get,
    alert_settings_update,
    alert_webhook_secret_rotate,
    backoff_seconds,
    quota_alerts_evaluate,
    webhook_signature,
    webhook_signature_verify,
)
from usage.models import AlertDelivery, Metric, QuotaAlert
from usage.services import quota_reserve

ACTOR = Actor.system("tests")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Receiver:
    """A real HTTP server on an ephemeral port that records what it receives and answers with the
    queued statuses (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/quota"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def local_webhooks(settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    settings.ALERT_WEBHOOK_REQUIRE_HTTPS = False
    settings.ALERT_RETRY_BASE_SECONDS = 60
    settings.ALERT_MAX_ATTEMPTS = 3


@pytest.fixture
def hooked(tenant, receiver, local_webhooks):
    """A tenant with a token limit of 1000, thresholds 50/80/95/100 and a webhook to `receiver`."""
    quota_override_update(tenant=tenant, actor=ACTOR, values={"tokens_per_month": 1000})
    change = alert_settings_update(
        tenant=tenant, actor=ACTOR, webhook_url=receiver.url, thresholds=[50, 80, 95, 100]
    )
    tenant.refresh_from_db()
    return tenant, change.webhook_secret


def use_tokens(tenant, amount, now=NOW):
    quota_reserve(tenant=tenant, metric=Metric.TOKENS, amount=amount, now=now)


@pytest.mark.django_db
def test_a_crossed_threshold_is_delivered_once_with_a_verifiable_signature(hooked, receiver):
    tenant, secret = hooked
    use_tokens(tenant, 850)  # past 50 % and 80 % at once

    assert quota_alerts_evaluate(now=NOW) == 2
    stats = alert_deliveries_send(now=NOW)

    assert stats.sent == 1
    alerts = {a.threshold: a for a in QuotaAlert.objects.filter(tenant=tenant)}
    assert set(alerts) == {50, 80}
    assert not alerts[50].notify  # superseded by 80 in the same evaluation: recorded, not sent
    (request,) = receiver.requests
    assert request["path"] == "/hooks/quota"
    assert webhook_signature_verify(
        secret=secret, body=request["body"], header=request["headers"]["X-RTP-Signature"]
    )
    payload = json.loads(request["body"])
    assert payload["id"] == alerts[80].pk == request["headers"]["X-RTP-Alert-Id"]
    assert payload["type"] == "quota.threshold_crossed"
    assert payload["quota"] == "tokens_per_month"
    assert (payload["threshold_percent"], payload["used"], payload["limit"]) == (80, 850, 1000)
    assert payload["period"]["start"].startswith("2026-03-01T00:00:00")
    assert payload["tenant"]["slug"] == tenant.slug
    audit = AuditEvent.objects.get(tenant=tenant, action="alert.sent")
    assert audit.details["threshold_percent"] == 80
    assert audit.details["host"] == "127.0.0.1"
    assert secret not in json.dumps(audit.details)

    # Evaluating and sending again changes nothing: each threshold fires once per period.
    assert quota_alerts_evaluate(now=NOW + timedelta(minutes=1)) == 0
    assert alert_deliveries_send(now=NOW + timedelta(minutes=1)).sent == 0
    assert len(receiver.requests) == 1

    use_tokens(tenant, 110)  # 960: past 95 %
    quota_alerts_evaluate(now=NOW + timedelta(minutes=2))
    alert_deliveries_send(now=NOW + timedelta(minutes=2))
    assert [json.loads(r["body"])["threshold_percent"] for r in receiver.requests] == [80, 95]


@pytest.mark.django_db
def test_a_new_period_alerts_afresh(hooked, receiver):
    tenant, _ = hooked
    use_tokens(tenant, 600)
    quota_alerts_evaluate(now=NOW)
    april = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC)
    use_tokens(tenant, 10, now=april)
    assert quota_alerts_evaluate(now=april) == 0  # 1 % of April's allowance
    use_tokens(tenant, 500, now=april)
    assert quota_alerts_evaluate(now=april) == 1
    periods = sorted(
        QuotaAlert.objects.filter(tenant=tenant, threshold=50).values_list("period_start", flat=True)
    )
    assert periods == [datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)]


@pytest.mark.django_db
def test_daily_secret_quota_alerts_per_utc_day(hooked):
    tenant, _ = hooked
    quota_override_update(tenant=tenant, actor=ACTOR, values={"secrets_per_day": 4})
    for _ in range(4):
        quota_reserve(tenant=tenant, metric=Metric.SECRETS, now=NOW)
    quota_alerts_evaluate(now=NOW)
    alert = QuotaAlert.objects.get(tenant=tenant, metric=Metric.SECRETS, notify=True)
    assert (alert.threshold, alert.period_start, alert.period_end) == (
        100,
        datetime(2026, 3, 10, tzinfo=UTC),
        datetime(2026, 3, 11, tzinfo=UTC),
    )


@pytest.mark.django_db
def test_a_failing_receiver_is_retried_with_backoff_then_succeeds(hooked, receiver):
    tenant, secret = hooked
    receiver.statuses = [500]
    use_tokens(tenant, 500)
    quota_alerts_evaluate(now=NOW)

    first = alert_deliveries_send(now=NOW)
    delivery = AlertDelivery.objects.get(tenant=tenant)
    assert (first.retrying, delivery.status, delivery.attempts) == (1, "pending", 1)
    assert delivery.last_error == "HTTP 500"
    assert NOW + timedelta(seconds=48) <= delivery.next_attempt_at <= NOW + timedelta(seconds=72)
    assert alert_deliveries_send(now=NOW + timedelta(seconds=30)).sent == 0  # not due yet

    second = alert_deliveries_send(now=delivery.next_attempt_at)

    assert second.sent == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("sent", 2, 200)
    assert [r["headers"]["X-RTP-Delivery-Attempt"] for r in receiver.requests] == ["1", "2"]
    assert len({r["headers"]["X-RTP-Alert-Id"] for r in receiver.requests}) == 1  # receivers dedupe on it
    assert all(
        webhook_signature_verify(secret=secret, body=r["body"], header=r["headers"]["X-RTP-Signature"])
        for r in receiver.requests
    )
    assert AuditEvent.objects.filter(tenant=tenant, action="alert.sent").count() == 1


@pytest.mark.django_db
def test_delivery_gives_up_after_the_last_attempt_and_says_so(hooked, receiver):
    tenant, _ = hooked
    receiver.statuses = [503, 503, 503]
    use_tokens(tenant, 500)
    quota_alerts_evaluate(now=NOW)
    moment = NOW
    for _ in range(3):
        alert_deliveries_send(now=moment)
        moment += timedelta(hours=2)
    delivery = AlertDelivery.objects.get(tenant=tenant)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert alert_deliveries_send(now=moment).sent == 0
    assert len(receiver.requests) == 3
    failed = AuditEvent.objects.get(tenant=tenant, action="alert.failed")
    assert failed.details["error"] == "HTTP 503"


@pytest.mark.django_db
def test_a_delivery_whose_worker_died_is_taken_over_after_its_lease(hooked, receiver):
    from usage.alerts import _claim

    tenant, _ = hooked
    use_tokens(tenant, 500)
    quota_alerts_evaluate(now=NOW)
    _claim(NOW, 10)  # a worker claims it, then dies before sending
    assert alert_deliveries_send(now=NOW + timedelta(seconds=30)).sent == 0  # lease still held
    assert alert_deliveries_send(now=NOW + timedelta(minutes=3)).sent == 1
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_email_alerts(tenant, settings, local_webhooks):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    quota_override_update(tenant=tenant, actor=ACTOR, values={"audio_minutes_per_month": 10})
    alert_settings_update(
        tenant=tenant, actor=ACTOR, emails=["ops@example.com", "OPS@example.com", "cfo@example.com"]
    )
    tenant.refresh_from_db()
    quota_reserve(tenant=tenant, metric=Metric.AUDIO_MS, amount=9 * 60_000, now=NOW)
    quota_alerts_evaluate(now=NOW)
    assert alert_deliveries_send(now=NOW).sent == 1
    (message,) = mail.outbox
    assert message.to == ["ops@example.com", "cfo@example.com"]
    assert "80% of audio_minutes_per_month" in message.subject
    assert "9.00 of 10.00" in message.body
    assert not AlertDelivery.objects.filter(channel="webhook").exists()


@pytest.mark.django_db
def test_tenants_without_a_channel_or_suspended_are_not_evaluated(
    tenant, other_tenant, local_webhooks, receiver
):
    quota_override_update(tenant=tenant, actor=ACTOR, values={"tokens_per_month": 100})
    use_tokens(tenant, 100)  # no webhook, no email
    alert_settings_update(tenant=other_tenant, actor=ACTOR, webhook_url=receiver.url)
    quota_override_update(tenant=other_tenant, actor=ACTOR, values={"tokens_per_month": 100})
    use_tokens(other_tenant, 100)
    Tenant.objects.filter(pk=other_tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert quota_alerts_evaluate(now=NOW) == 0


@pytest.mark.django_db
def test_private_addresses_are_refused_at_delivery_time(hooked, receiver, settings):
    tenant, _ = hooked
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False  # the URL was accepted earlier; the rule changed
    use_tokens(tenant, 500)
    quota_alerts_evaluate(now=NOW)
    stats = alert_deliveries_send(now=NOW)
    assert stats.retrying == 1
    assert "private addresses" in stats.errors[0]
    assert receiver.requests == []


@pytest.mark.django_db
def test_settings_generate_the_signing_secret_once_and_store_it_encrypted(tenant, local_webhooks):
    change = alert_settings_update(
        tenant=tenant, actor=ACTOR, webhook_url="https://hooks.example.com/rtp?token=abc"
    )
    secret = change.webhook_secret
    assert secret.startswith("whsec_")
    stored = Tenant.objects.get(pk=tenant.pk).alert_webhook_secret_encrypted
    assert secret not in stored
    assert crypto.decrypt(stored) == secret
    assert change.settings.has_webhook_secret

    again = alert_settings_update(tenant=tenant, actor=ACTOR, webhook_url="https://other.example.com/x")
    assert again.webhook_secret is None  # an existing secret is kept and never shown again

    rotated = alert_webhook_secret_rotate(tenant=tenant, actor=ACTOR)
    assert rotated != secret
    assert crypto.decrypt(Tenant.objects.get(pk=tenant.pk).alert_webhook_secret_encrypted) == rotated

    actions = list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="alert.")
        .order_by("seq")
        .values_list("action", "details")
    )
    assert [a for a, _ in actions] == [
        "alert.settings_changed",
        "alert.settings_changed",
        "alert.secret_rotated",
    ]
    assert actions[0][1]["changes"]["webhook_host"] == {"before": "", "after": "hooks.example.com"}
    assert "token=abc" not in json.dumps(actions)
    assert secret not in json.dumps(actions)


@pytest.mark.django_db
def test_settings_are_cleaned(tenant, local_webhooks):
    change = alert_settings_update(
        tenant=tenant, actor=ACTOR, thresholds=[95, 50, 50, 80], emails=[" a@example.com "]
    )
    assert change.settings.thresholds == [50, 80, 95]
    assert change.settings.emails == ["a@example.com"]
    alert_settings_update(tenant=tenant, actor=ACTOR, emails=[])
    assert alert_settings_get(tenant=tenant).emails == []


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"thresholds": [0]}, "thresholds"),
        ({"thresholds": [101]}, "thresholds"),
        ({"thresholds": ["50"]}, "thresholds"),
        ({"thresholds": [True]}, "thresholds"),
        ({"thresholds": list(range(1, 12))}, "thresholds"),
        ({"emails": ["not-an-address"]}, "emails"),
        ({"emails": [f"u{i}@example.com" for i in range(11)]}, "emails"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "http://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "https://user:pw@example.com/hook"}, "webhook_url"),
        ({"webhook_url": "https://127.0.0.1/hook"}, "webhook_url"),
        ({"webhook_url": "https://10.0.0.8/hook"}, "webhook_url"),
        ({"webhook_url": "https://169.254.169.254/latest"}, "webhook_url"),
        ({"webhook_url": "https://localhost/hook"}, "webhook_url"),
        ({"webhook_url": "https://[::1]/hook"}, "webhook_url"),
        ({"webhook_url": "https://example.com/" + "x" * 500}, "webhook_url"),
    ],
)
@pytest.mark.django_db
def test_bad_settings_are_refused_with_the_field_named(tenant, settings, values, param):
    settings.ALERT_WEBHOOK_REQUIRE_HTTPS = True
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    before = alert_settings_get(tenant=tenant)
    with pytest.raises(BadRequest) as excinfo:
        alert_settings_update(tenant=tenant, actor=ACTOR, **values)
    assert excinfo.value.param == param
    assert excinfo.value.status == 400
    assert alert_settings_get(tenant=Tenant.objects.get(pk=tenant.pk)) == before


def test_signatures_bind_body_secret_and_time():
    body = b'{"id":"qa_1"}'
    header = webhook_signature(secret="whsec_a", body=body, timestamp=1_000_000)
    assert webhook_signature_verify(secret="whsec_a", body=body, header=header, now=1_000_100)
    assert not webhook_signature_verify(secret="whsec_b", body=body, header=header, now=1_000_100)
    assert not webhook_signature_verify(secret="whsec_a", body=body + b" ", header=header, now=1_000_100)
    assert not webhook_signature_verify(secret="whsec_a", body=body, header=header, now=1_000_301)  # replay
    assert not webhook_signature_verify(secret="whsec_a", body=body, header="garbage", now=1_000_000)


def test_backoff_doubles_and_is_capped(settings):
    settings.ALERT_RETRY_BASE_SECONDS = 60
    settings.ALERT_RETRY_MAX_SECONDS = 3600
    assert 48 <= backoff_seconds(1) <= 72
    assert 96 <= backoff_seconds(2) <= 144
    assert 2880 <= backoff_seconds(10) <= 4320
