from __future__ import annotations

from django.db import models
from django.utils import timezone

from tokens.models import public_id


def new_session_id() -> str:
    return public_id("rs_")


class RealtimeSession(models.Model):
    """One relayed realtime session, from handshake to close, with what it used."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        ENDED = "ended", "Ended"

    class Credential(models.TextChoices):
        API_KEY = "api_key", "Tenant API key"
        RELAY_TOKEN = "relay_token", "Relay token"

    id = models.CharField(primary_key=True, max_length=32, default=new_session_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="realtime_sessions")
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="realtime_sessions"
    )
    client_secret = models.ForeignKey(
        "tokens.ClientSecret",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="realtime_sessions",
    )
    credential = models.CharField(max_length=16, choices=Credential.choices, default=Credential.API_KEY)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # An ACTIVE session holds one concurrency slot: the tenant's counter, and also its API key's
    # when the key has its own concurrent-session limit (then slot_key_held). Whoever moves the row
    # from ACTIVE to ENDED (the relay, or the stale-session sweep) releases exactly that, once.
    slot_key_held = models.BooleanField(default=False)
    model = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=32, blank=True, default="")
    close_code = models.PositiveIntegerField(null=True, blank=True)
    channel_name = models.CharField(max_length=200, blank=True, default="")
    upstream_session_id = models.CharField(max_length=64, blank=True, default="")
    frames_in = models.BigIntegerField(default=0)
    frames_out = models.BigIntegerField(default=0)
    bytes_in = models.BigIntegerField(default=0)
    bytes_out = models.BigIntegerField(default=0)
    audio_in_ms = models.BigIntegerField(default=0)
    audio_out_ms = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=0)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "status"], name="session_tenant_status"),
            models.Index(fields=["status", "last_seen_at"], name="session_status_seen"),
            models.Index(fields=["tenant", "-started_at"], name="session_tenant_started"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"
