"""Redeeming a relay token (`rtp_rt_…`) on the realtime WebSocket (CONTRACTS §3).

Issuance stores a ClientSecret row (kind "relay") with the token's fingerprint, never the token.
Redemption finds it by fingerprint and refuses, each with its own OpenAI-shaped error:
  malformed or bad checksum, unknown        → 401 invalid_api_key (no database lookup for the first two)
  revoked                                  → 401 relay_token_revoked
  expired (by time or by the sweep)        → 401 relay_token_expired
  already used (single-use)                → 401 relay_token_used
  issuing API key revoked or expired       → 401 api_key_revoked / api_key_expired
  tenant suspended                         → 403 tenant_suspended
A single-use token is consumed by one conditional UPDATE (`active → used`), so of any number of
concurrent redemptions exactly one wins. Call it inside the transaction that opens the session:
if opening fails later (quota full), the rollback gives the token back.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from realtime_platform.errors import AuthenticationFailed, PermissionDenied
from tenants import keys
from tenants.auth import INCORRECT_KEY_MESSAGE
from tokens.models import ClientSecret


def relay_token_find(raw: str) -> ClientSecret | None:
    """The relay token's row, whatever its state (None for malformed or unknown tokens)."""
    parsed = keys.parse(raw)
    if parsed is None or parsed.key_type is not keys.KeyType.RELAY_TOKEN:
        return None
    return (
        ClientSecret.objects.select_related("tenant", "api_key")
        .filter(fingerprint=keys.fingerprint(raw), kind=ClientSecret.Kind.RELAY)
        .first()
    )


def _refuse_state(secret: ClientSecret, now: datetime) -> None:
    if secret.status == ClientSecret.Status.REVOKED:
        raise AuthenticationFailed("This relay token has been revoked.", code="relay_token_revoked")
    if secret.status == ClientSecret.Status.USED:
        raise AuthenticationFailed(
            "This relay token has already been used. Relay tokens open one session; request a new one.",
            code="relay_token_used",
        )
    if secret.status == ClientSecret.Status.EXPIRED or secret.expires_at <= now:
        raise AuthenticationFailed("This relay token has expired.", code="relay_token_expired")


def relay_token_redeem(*, raw: str, now: datetime | None = None) -> ClientSecret:
    """The token's ClientSecret, consumed if it is single-use; raises the refusals listed above."""
    now = now or timezone.now()
    secret = relay_token_find(raw)
    if secret is None:
        raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
    _refuse_state(secret, now)
    api_key = secret.api_key
    if api_key is not None and api_key.revoked_at is not None:
        raise AuthenticationFailed(
            "The API key that issued this relay token has been revoked.", code="api_key_revoked"
        )
    if api_key is not None and api_key.expires_at is not None and api_key.expires_at <= now:
        raise AuthenticationFailed(
            "The API key that issued this relay token has expired.", code="api_key_expired"
        )
    if not secret.tenant.is_active:
        raise PermissionDenied(
            "This tenant is suspended. Contact the platform operator.", code="tenant_suspended"
        )
    claimable = ClientSecret.objects.filter(
        pk=secret.pk, status=ClientSecret.Status.ACTIVE, expires_at__gt=now
    )
    if secret.single_use:
        # The one statement that decides who gets the session: concurrent redeemers queue on the
        # row lock, and all but the first find the status no longer active.
        if not claimable.update(status=ClientSecret.Status.USED, used_at=now):
            secret.refresh_from_db(fields=["status", "expires_at"])
            _refuse_state(secret, now)
            raise AuthenticationFailed("This relay token has already been used.", code="relay_token_used")
        secret.status = ClientSecret.Status.USED
        secret.used_at = now
    else:
        claimable.filter(Q(used_at__isnull=True)).update(used_at=now)  # first use, for the record
        if secret.used_at is None:
            secret.used_at = now
    return secret
