"""The stale-session sweep: end relay sessions whose process died, and free their slots.

Contract with the relay (which owns everything else in relay/): while a session lives, its
process touches `RealtimeSession.last_seen_at` at least every RELAY_HEARTBEAT_SECONDS (10 s); a
session not seen for RELAY_SESSION_STALE_SECONDS (default 120 s) is presumed dead. Both sides end
a session with a conditional UPDATE (`WHERE status = 'active'`) and release its concurrency slot
only if that UPDATE matched, so a slow-but-alive relay and this sweep can never both release it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.actors import Actor
from audit.services import audit_record
from relay.models import RealtimeSession
from tenants.models import Tenant
from usage.models import UsageEvent
from usage.rollups import rollup_mark_pending_many
from usage.services import quota_release_sessions

logger = logging.getLogger(__name__)

STALE_REASON = "stale"
SWEEP_BATCH = 500


class StaleSession(NamedTuple):
    id: str
    tenant_id: int
    api_key_id: int | None
    client_secret_id: str | None
    model: str
    last_seen_at: datetime
    slot_key_held: bool


def stale_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.RELAY_SESSION_STALE_SECONDS)


def realtime_session_stale_count(*, now: datetime | None = None) -> int:
    cutoff = stale_cutoff(now or timezone.now())
    return RealtimeSession.objects.filter(
        status=RealtimeSession.Status.ACTIVE, last_seen_at__lt=cutoff
    ).count()


def realtime_session_stale_sweep(
    *,
    now: datetime | None = None,
    batch_size: int = SWEEP_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """End every active session not seen since the stale cutoff, with end reason "stale", and in
    the same transaction release its concurrency slot (tenant counter, plus the key's counter when
    the relay debited it: `slot_key_held`), write its `session_ended` usage event (natural key
    `session:<id>`, so a relay that already wrote it wins; the relay meters its own leftover audio
    under `audio:<id>`) and audit `session.ended`. Rows are claimed with FOR UPDATE SKIP LOCKED
    and ended by one conditional UPDATE per batch; running twice or concurrently ends and releases
    each once."""
    now = now or timezone.now()
    cutoff = stale_cutoff(now)
    actor = Actor.system("stale-session-sweep")
    total = 0
    while True:
        with transaction.atomic():
            rows = [
                StaleSession(*values)
                for values in RealtimeSession.objects.select_for_update(skip_locked=True)
                .filter(status=RealtimeSession.Status.ACTIVE, last_seen_at__lt=cutoff)
                .order_by("last_seen_at")
                .values_list(*StaleSession._fields)[:batch_size]
            ]
            if not rows:
                break
            ended = RealtimeSession.objects.filter(
                id__in=[row.id for row in rows], status=RealtimeSession.Status.ACTIVE
            ).update(status=RealtimeSession.Status.ENDED, ended_at=now, end_reason=STALE_REASON)
            if ended != len(rows):  # rows are locked by us; anything else is a bug worth stopping on
                raise RuntimeError(f"stale sweep claimed {len(rows)} sessions but ended {ended}")
            _release_slots(rows)
            _record_ended(rows, now)
            tenants = Tenant.objects.in_bulk({row.tenant_id for row in rows})
            for row in rows:
                audit_record(
                    tenant=tenants[row.tenant_id],
                    actor=actor,
                    action="session.ended",
                    target_type="relay.realtimesession",
                    target_id=row.id,
                    details={
                        "reason": STALE_REASON,
                        "last_seen_at": row.last_seen_at.isoformat(),
                        "model": row.model,
                    },
                )
        total += len(rows)
        if progress is not None:
            progress(len(rows))
    if total:
        logger.warning("ended stale relay sessions count=%s cutoff=%s", total, cutoff.isoformat())
    return total


def _release_slots(rows: list[StaleSession]) -> None:
    """The slots these sessions hold: the tenant's always, the key's when the relay debited it
    (recorded on the row, so a key limit changed since does not skew the release)."""
    tenant_counts = Counter(row.tenant_id for row in rows)
    key_counts = Counter(row.api_key_id for row in rows if row.slot_key_held and row.api_key_id is not None)
    quota_release_sessions(tenant_counts=tenant_counts, key_counts=key_counts)


def _record_ended(rows: list[StaleSession], now: datetime) -> None:
    """One `session_ended` fact per session, counted in rollups. It carries no amounts: tokens and
    cost are metered per response as they pass, and whatever a dead process had not flushed is
    not known here."""
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                tenant_id=row.tenant_id,
                api_key_id=row.api_key_id,
                session_id=row.id,
                client_secret_id=row.client_secret_id,
                kind=UsageEvent.Kind.SESSION_ENDED,
                natural_key=f"session:{row.id}",
                model=row.model,
                occurred_at=now,
            )
            for row in rows
        ],
        ignore_conflicts=True,
    )
    rollup_mark_pending_many((row.tenant_id, now) for row in rows)
