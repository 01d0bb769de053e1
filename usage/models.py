from __future__ import annotations

from django.db import models
from django.utils import timezone


class Metric(models.TextChoices):
    """Exactly-enforced quota metrics, each counted in an integer unit."""

    SECRETS = "secrets", "Client secrets per day"
    SESSIONS = "sessions", "Concurrent relay sessions"
    AUDIO_MS = "audio_ms", "Audio milliseconds per month"
    TOKENS = "tokens", "Tokens per month"
    COST_MICROUSD = "cost_microusd", "Cost in micro-USD per month"


class QuotaCounter(models.Model):
    """Usage of one metric in one period, for a tenant (api_key null) or one of its keys.

    Debits are single conditional UPDATEs (`used = used + n WHERE used + n <= limit`), so
    concurrent requests can never overspend. A new period is a new row, so there is no reset
    step and no window in which a tenant could spend twice."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="quota_counters")
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="quota_counters"
    )
    metric = models.CharField(max_length=16, choices=Metric.choices)
    period_start = models.DateTimeField()
    used = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "metric", "period_start"],
                condition=models.Q(api_key__isnull=True),
                name="quotacounter_tenant_unique",
            ),
            models.UniqueConstraint(
                fields=["api_key", "metric", "period_start"],
                condition=models.Q(api_key__isnull=False),
                name="quotacounter_key_unique",
            ),
        ]

    def __str__(self) -> str:
        scope = f"{self.tenant_id}/{self.api_key_id or '-'}"
        return f"{scope} {self.metric}@{self.period_start:%Y-%m-%d}={self.used}"


class UsageEvent(models.Model):
    """One metered fact. `natural_key` is unique, so a retried or replayed write counts once:
    `resp:<session>:<response id>`, `secret:<client secret id>`, `session:<session id>` (the end
    of a session, written by the relay or the stale sweep, whichever ends it) and
    `audio:<session id>` (audio a session streamed after its last response, written by the relay)."""

    class Kind(models.TextChoices):
        SECRET_ISSUED = "secret_issued", "Client secret issued"
        RESPONSE = "response", "Response usage"
        SESSION_ENDED = "session_ended", "Session ended"
        AUDIO = "audio", "Audio not charged with a response"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage_events")
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    session = models.ForeignKey(
        "relay.RealtimeSession", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_events"
    )
    client_secret = models.ForeignKey(
        "tokens.ClientSecret", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_events"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    natural_key = models.CharField(max_length=200, unique=True)
    model = models.CharField(max_length=100, blank=True, default="")
    occurred_at = models.DateTimeField(default=timezone.now)
    input_text_tokens = models.PositiveIntegerField(default=0)
    input_audio_tokens = models.PositiveIntegerField(default=0)
    input_image_tokens = models.PositiveIntegerField(default=0)
    cached_text_tokens = models.PositiveIntegerField(default=0)
    cached_audio_tokens = models.PositiveIntegerField(default=0)
    cached_image_tokens = models.PositiveIntegerField(default=0)
    output_text_tokens = models.PositiveIntegerField(default=0)
    output_audio_tokens = models.PositiveIntegerField(default=0)
    audio_in_ms = models.BigIntegerField(default=0)
    audio_out_ms = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=0)

    class Meta:
        indexes = [
            models.Index(fields=["occurred_at", "id"], name="usageevent_time"),
            models.Index(fields=["tenant", "occurred_at"], name="usageevent_tenant_time"),
        ]

    def __str__(self) -> str:
        return self.natural_key

    @property
    def total_tokens(self) -> int:
        return (
            self.input_text_tokens
            + self.input_audio_tokens
            + self.input_image_tokens
            + self.output_text_tokens
            + self.output_audio_tokens
        )


class UsageRollup(models.Model):
    """Usage of one tenant, API key and model over one hour or one day of the tenant's own time
    zone. `bucket_start` is the UTC instant at which that local hour or day begins, so storage is
    UTC and a local day (23, 24 or 25 hours long) is one row.

    Rows are recomputed from the ledger (delete the affected buckets, re-insert their sums), never
    incremented, so a rerun produces the same rows and cannot double-count."""

    class Granularity(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="usage_rollups")
    # No database constraint: history outlives a deleted key (the console shows "deleted key").
    api_key = models.ForeignKey(
        "tenants.ApiKey",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    model = models.CharField(max_length=100, blank=True, default="")
    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField()
    responses = models.BigIntegerField(default=0)
    sessions = models.BigIntegerField(default=0)
    secrets = models.BigIntegerField(default=0)
    input_text_tokens = models.BigIntegerField(default=0)
    input_audio_tokens = models.BigIntegerField(default=0)
    input_image_tokens = models.BigIntegerField(default=0)
    cached_text_tokens = models.BigIntegerField(default=0)
    cached_audio_tokens = models.BigIntegerField(default=0)
    cached_image_tokens = models.BigIntegerField(default=0)
    output_text_tokens = models.BigIntegerField(default=0)
    output_audio_tokens = models.BigIntegerField(default=0)
    audio_in_ms = models.BigIntegerField(default=0)
    audio_out_ms = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=8, default=0)
    computed_at = models.DateTimeField(default=timezone.now)

    SUM_FIELDS = (
        "responses",
        "sessions",
        "secrets",
        "input_text_tokens",
        "input_audio_tokens",
        "input_image_tokens",
        "cached_text_tokens",
        "cached_audio_tokens",
        "cached_image_tokens",
        "output_text_tokens",
        "output_audio_tokens",
        "audio_in_ms",
        "audio_out_ms",
        "cost_usd",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "granularity", "bucket_start", "model"],
                condition=models.Q(api_key__isnull=True),
                name="usagerollup_nokey_unique",
            ),
            models.UniqueConstraint(
                fields=["tenant", "api_key", "granularity", "bucket_start", "model"],
                condition=models.Q(api_key__isnull=False),
                name="usagerollup_key_unique",
            ),
        ]
        indexes = [models.Index(fields=["tenant", "granularity", "bucket_start"], name="usagerollup_series")]

    def __str__(self) -> str:
        return (
            f"{self.tenant_id}/{self.api_key_id or '-'}/{self.model} {self.granularity}@{self.bucket_start}"
        )


class UsageRollupPending(models.Model):
    """One UTC hour of one tenant's ledger that changed since it was last rolled up.

    `usage_record` upserts it in the same transaction as the event (ON CONFLICT DO UPDATE, which
    holds the row lock until that transaction commits), so every committed event leaves a marker
    that a rollup run has not yet consumed, and a run can never consume a marker while missing
    the event behind it. Rollups claim markers with SKIP LOCKED and delete them."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    hour_start = models.DateTimeField()
    touched_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "hour_start"], name="rolluppending_tenant_hour_unique")
        ]
        indexes = [models.Index(fields=["hour_start", "tenant"], name="rolluppending_order")]

    def __str__(self) -> str:
        return f"{self.tenant_id}@{self.hour_start:%Y-%m-%dT%H}"


class UsageRollupState(models.Model):
    """Per tenant: the time zone its rollups are aligned to, and how far back the ledger has been
    purged (buckets before that can no longer be recomputed, so nothing recomputes them). Runs
    lock this row, so one tenant's buckets are only ever rewritten by one transaction at a time."""

    tenant = models.OneToOneField(
        "tenants.Tenant", on_delete=models.CASCADE, primary_key=True, related_name="usage_rollup_state"
    )
    time_zone = models.CharField(max_length=64)
    purged_before = models.DateTimeField(null=True, blank=True)
    rolled_up_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"rollups of {self.tenant_id} in {self.time_zone}"


def new_alert_id() -> str:
    from tokens.models import public_id

    return public_id("qa_")


class QuotaAlert(models.Model):
    """A tenant's usage of one metric crossed one threshold (percent of its limit) in one period.
    Unique per tenant, metric, period and threshold: each threshold fires once per period however
    often, or however concurrently, the evaluation runs."""

    id = models.CharField(primary_key=True, max_length=32, default=new_alert_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="quota_alerts")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    used = models.BigIntegerField()
    limit = models.BigIntegerField()
    # False when a higher threshold was crossed at the same evaluation: recorded, not sent, so a
    # jump from 40 % to 100 % sends one alert instead of four.
    notify = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "metric", "period_start", "threshold"], name="quotaalert_once_per_period"
            )
        ]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="quotaalert_tenant_created")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.metric} {self.threshold}% @{self.period_start:%Y-%m-%d}"


class AlertDelivery(models.Model):
    """Delivery of one alert over one channel, retried with backoff until sent or given up.
    Claimed with a lease (status `sending`, `lease_until`), so a worker that dies mid-send leaves
    it to be retried; delivery is at-least-once and receivers dedupe on the alert id."""

    class Channel(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        EMAIL = "email", "Email"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    alert = models.ForeignKey(QuotaAlert, on_delete=models.CASCADE, related_name="deliveries")
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    channel = models.CharField(max_length=8, choices=Channel.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel"], name="alertdelivery_alert_channel_unique")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alertdelivery_due")]

    def __str__(self) -> str:
        return f"{self.alert_id} via {self.channel}: {self.status}"
