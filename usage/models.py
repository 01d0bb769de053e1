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
    `resp:<session>:<response id>`, `secret:<client secret id>`, `session:<session id>`."""

    class Kind(models.TextChoices):
        SECRET_ISSUED = "secret_issued", "Client secret issued"
        RESPONSE = "response", "Response usage"
        SESSION_ENDED = "session_ended", "Session ended"

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
