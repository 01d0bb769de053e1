"""`Idempotency-Key` for issuance, with records in the database (Redis is not needed).

- Same key, same body, within 24 hours: the first response again, byte for byte, with no
  second upstream call and no second quota debit (header `Idempotent-Replayed: true`).
- Same key while the first request is still being processed: 409 (`idempotency_request_in_progress`,
  with Retry-After; the official SDK retries 409s by itself).
- Same key, different body: 422 (`idempotency_key_reused`).
- A request that fails releases its key, so the client may retry with the same key.

Keys are scoped to the API key that sent them. "Same body" means the same JSON after parsing
(key order and whitespace do not matter). A holder that dies mid-request leaves its claim in
flight until `IDEMPOTENCY_LEASE_SECONDS` pass; then the next duplicate takes it over.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from realtime_platform import crypto
from realtime_platform.errors import BadRequest, Conflict, Unprocessable
from tenants.models import ApiKey
from tokens.models import IdempotencyRecord

logger = logging.getLogger(__name__)

RETENTION = timedelta(hours=24)
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    record_id: int


@dataclass(frozen=True)
class Replay:
    status: int
    body: bytes


def idempotency_key_from_header(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or len(value) > MAX_KEY_LENGTH or not value.isascii() or not value.isprintable():
        raise BadRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            code="invalid_idempotency_key",
        )
    return value


def request_fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


def _lease(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.IDEMPOTENCY_LEASE_SECONDS)


def _in_progress() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still being processed. Retry shortly to get its result.",
        code="idempotency_request_in_progress",
        headers={"Retry-After": "1", "x-should-retry": "true"},
    )


def idempotency_claim(
    *, api_key: ApiKey, key: str, request_hash: str, now: datetime | None = None
) -> Claim | Replay:
    """Claim `key` for this request, or find what an earlier request with it did."""
    for _ in range(3):
        now = now or timezone.now()
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    tenant_id=api_key.tenant_id,
                    api_key=api_key,
                    key=key,
                    request_hash=request_hash,
                    locked_until=_lease(now),
                    created_at=now,
                    expires_at=now + RETENTION,
                )
            return Claim(record_id=record.pk)
        except IntegrityError:
            existing = IdempotencyRecord.objects.filter(api_key=api_key, key=key).first()
        if existing is None:
            continue  # released a moment ago: try to claim again
        if existing.expires_at <= now:
            IdempotencyRecord.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if existing.request_hash != request_hash:
            raise Unprocessable(
                "This Idempotency-Key was already used with a different request body. Use a new key "
                "for a new request.",
                code="idempotency_key_reused",
            )
        if existing.state == IdempotencyRecord.State.COMPLETED:
            assert existing.response_status is not None
            return Replay(
                status=existing.response_status, body=crypto.decrypt(existing.response_encrypted).encode()
            )
        if existing.locked_until > now:
            raise _in_progress()
        taken = IdempotencyRecord.objects.filter(
            pk=existing.pk, state=IdempotencyRecord.State.IN_FLIGHT, locked_until__lte=now
        ).update(locked_until=_lease(now))
        if taken:
            logger.warning("idempotency claim taken over after lease expiry record=%s", existing.pk)
            return Claim(record_id=existing.pk)
        raise _in_progress()
    raise _in_progress()


def idempotency_complete(*, claim: Claim, status: int, body: bytes, client_secret_id: str | None) -> None:
    """Store the response (encrypted: it carries the secret). Call inside the transaction that
    made the secret, so the two commit together."""
    IdempotencyRecord.objects.filter(pk=claim.record_id).update(
        state=IdempotencyRecord.State.COMPLETED,
        response_status=status,
        response_encrypted=crypto.encrypt(body.decode()),
        client_secret_id=client_secret_id,
    )


def idempotency_release(*, claim: Claim) -> None:
    """Forget a claim whose request failed, so the same key can be retried."""
    IdempotencyRecord.objects.filter(pk=claim.record_id, state=IdempotencyRecord.State.IN_FLIGHT).delete()


def idempotency_purge(*, now: datetime | None = None) -> int:
    """Delete records past their 24 hours: one set-based DELETE, safe to run concurrently."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
