"""Request-rate limits on issuance: django-ratelimit counters per tenant and per API key.

Counters live in Django's default cache: Redis when REDIS_URL is set (shared by every process),
local memory otherwise (per process; fine for the embedded single-process run).

What these limits are and are not:
- Fixed one-minute windows (django-ratelimit staggers each key's window by a hash of the key).
  A client can send up to the limit at the end of one window and the limit again at the start
  of the next, so up to **twice the limit can pass within a short span across a boundary**.
  That is acceptable for protecting the service from bursts; anything that must be exact
  (the daily secret quota, concurrent sessions, money) is enforced by the atomic counters in
  `usage.services`, never by these.
- Redis down: issuance **fails closed, fast**. The first failing call answers 503 with
  `Retry-After`, and a breaker then answers 503 at once for `RATE_LIMIT_BREAKER_SECONDS`
  without touching Redis, so a dead Redis costs callers no connect timeouts. Rationale: without
  shared counters the per-tenant limit cannot be enforced across processes, and the rest of
  the platform (channel layer, broker) needs Redis too, so degraded operation would only hide
  the outage.

Limits: the tenant's `requests_per_minute` (plan or override; none means unlimited), and per API
key `settings.RATE_LIMIT_PER_KEY_PER_MINUTE` when set and tighter than the tenant's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django_ratelimit.core import get_usage
from redis.exceptions import RedisError

from realtime_platform.errors import RateLimited, ServiceUnavailable

logger = logging.getLogger(__name__)

GROUP_TENANT = "issuance.tenant"
GROUP_KEY = "issuance.key"

_breaker_lock = threading.Lock()
_down_until = 0.0


@dataclass(frozen=True)
class RateState:
    """The binding limit after this request was counted: what the x-ratelimit-* headers say."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": f"{self.reset_seconds}s",
        }


def breaker_reset() -> None:
    """Close the breaker (tests, and operators after fixing Redis, though it reopens by itself)."""
    global _down_until
    with _breaker_lock:
        _down_until = 0.0


def _unavailable(retry_after: float) -> ServiceUnavailable:
    return ServiceUnavailable(
        "Rate limiting is temporarily unavailable, so no client secrets can be issued. Retry shortly.",
        retry_after=max(1, round(retry_after)),
        code="rate_limiter_unavailable",
    )


def _count(group: str, value: str, limit: int) -> dict[str, Any]:
    global _down_until
    if time.monotonic() < _down_until:
        raise _unavailable(_down_until - time.monotonic())
    try:
        usage = get_usage(
            None, group=group, key=lambda _group, _request: value, rate=f"{limit}/m", increment=True
        )
    except (RedisError, OSError) as exc:
        pause = settings.RATE_LIMIT_BREAKER_SECONDS
        with _breaker_lock:
            _down_until = time.monotonic() + pause
        logger.warning("rate-limit store unreachable, failing closed for %ss: %s", pause, type(exc).__name__)
        raise _unavailable(pause) from exc
    if usage is None:  # RATELIMIT_ENABLE is off
        return {"count": 0, "limit": limit, "should_limit": False, "time_left": 60}
    return dict(usage)


def rate_limit_check(*, tenant_id: int, api_key_id: int, tenant_per_minute: int | None) -> RateState | None:
    """Count this request against the tenant's and the key's limits. Raises RateLimited (429) when
    either is exceeded; returns the binding limit's state, or None when nothing limits."""
    limits: list[tuple[str, str, int, str]] = []
    if tenant_per_minute is not None:
        limits.append((GROUP_TENANT, str(tenant_id), tenant_per_minute, "organization"))
    per_key = settings.RATE_LIMIT_PER_KEY_PER_MINUTE
    if per_key is not None and (tenant_per_minute is None or per_key < tenant_per_minute):
        limits.append((GROUP_KEY, str(api_key_id), per_key, "API key"))
    binding: RateState | None = None
    for group, value, limit, scope in limits:
        usage = _count(group, value, limit)
        reset = max(1, int(usage["time_left"]))
        state = RateState(limit=limit, remaining=max(0, limit - int(usage["count"])), reset_seconds=reset)
        if usage["should_limit"]:
            raise RateLimited(
                f"Rate limit reached for client secrets on this {scope}: limit {limit} requests per minute. "
                f"Please try again in {reset}s.",
                retry_after=reset,
                headers=state.headers(),
            )
        if binding is None or state.remaining < binding.remaining:
            binding = state
    return binding
