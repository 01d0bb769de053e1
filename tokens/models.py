from __future__ import annotations

import secrets
import string
from datetime import datetime

from django.db import models
from django.utils import timezone

_ID_ALPHABET = string.ascii_letters + string.digits


def public_id(prefix: str) -> str:
    """OpenAI-style ids (`cs_` + 21 alphanumerics): not guessable, not sequential."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(21))


def new_client_secret_id() -> str:
    return public_id("cs_")


class ClientSecret(models.Model):
    """A short-lived credential handed to a client app. The value itself is never stored: only a
    fingerprint (HMAC) and the last four characters."""

    class Kind(models.TextChoices):
        UPSTREAM = "upstream", "OpenAI ephemeral key"
        RELAY = "relay", "Platform relay token"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"
        USED = "used", "Used"

    id = models.CharField(primary_key=True, max_length=32, default=new_client_secret_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="client_secrets")
    api_key = models.ForeignKey(
        "tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="client_secrets"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    lookup_prefix = models.CharField(max_length=20, blank=True, default="", db_index=True)
    fingerprint = models.CharField(max_length=64, unique=True)
    last_four = models.CharField(max_length=4)
    model = models.CharField(max_length=100, blank=True, default="")
    session_config = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    single_use = models.BooleanField(default=True)
    max_session_seconds = models.PositiveIntegerField(null=True, blank=True)
    cost_ceiling_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True)
    upstream_session_id = models.CharField(max_length=64, blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="clientsecret_tenant_created"),
            models.Index(fields=["status", "expires_at"], name="clientsecret_status_expiry"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.kind}, …{self.last_four})"

    def status_at(self, now: datetime) -> str:
        """The status as of `now`: the sweep marks expired secrets every 30 s; reads do not wait for it."""
        if self.status == self.Status.ACTIVE and self.expires_at <= now:
            return self.Status.EXPIRED
        return self.status


class IdempotencyRecord(models.Model):
    """One `Idempotency-Key` of one API key, kept 24 hours.

    The unique constraint is what makes duplicates safe: of any number of concurrent requests
    with the same key, exactly one inserts the row and does the work; the others find it and get
    409 while it is in flight, or the stored response once it is complete. The response holds
    the client secret itself, so it is stored encrypted (Fernet), never in plain text."""

    class State(models.TextChoices):
        IN_FLIGHT = "in_flight", "In flight"
        COMPLETED = "completed", "Completed"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("tenants.ApiKey", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.IN_FLIGHT)
    # While in flight: when another request may take the key over (its holder died mid-request).
    locked_until = models.DateTimeField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_encrypted = models.TextField(blank=True, default="", editable=False)
    client_secret = models.ForeignKey(
        ClientSecret, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_key_per_api_key"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.api_key_id}:{self.key} ({self.state})"
