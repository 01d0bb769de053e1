"""Reads of relay sessions, always for one tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet

from relay.models import RealtimeSession
from tenants.models import Tenant


def realtime_session_list(
    *, tenant: Tenant, status: str | None = None, limit: int = 100
) -> QuerySet[RealtimeSession]:
    sessions = RealtimeSession.objects.filter(tenant=tenant).select_related("api_key")
    if status:
        sessions = sessions.filter(status=status)
    return sessions.order_by("-started_at", "-id")[:limit]


def realtime_session_get(*, tenant: Tenant, session_id: str) -> RealtimeSession | None:
    return RealtimeSession.objects.select_related("api_key").filter(tenant=tenant, id=session_id).first()


def realtime_session_filter(
    *,
    tenant: Tenant,
    status: str | None = None,
    api_key_id: int | None = None,
    model: str | None = None,
    credential: str | None = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
) -> QuerySet[RealtimeSession]:
    """Newest first (started_at, then id: a stable order for keyset pages), not sliced."""
    sessions = RealtimeSession.objects.filter(tenant=tenant).select_related("api_key", "client_secret")
    if status:
        sessions = sessions.filter(status=status)
    if api_key_id is not None:
        sessions = sessions.filter(api_key_id=api_key_id)
    if model:
        sessions = sessions.filter(model=model)
    if credential:
        sessions = sessions.filter(credential=credential)
    if started_after is not None:
        sessions = sessions.filter(started_at__gte=started_after)
    if started_before is not None:
        sessions = sessions.filter(started_at__lt=started_before)
    return sessions.order_by("-started_at", "-id")


@dataclass(frozen=True)
class SessionPage:
    items: list[RealtimeSession]
    has_more: bool


def realtime_session_page(
    sessions: QuerySet[RealtimeSession], *, tenant: Tenant, limit: int, after: str | None = None
) -> SessionPage | None:
    """The `limit` sessions after the one with id `after` (None: from the start). None when
    `after` is not one of this tenant's sessions."""
    if after is not None:
        anchor = (
            RealtimeSession.objects.filter(tenant=tenant, id=after).values_list("started_at", "id").first()
        )
        if anchor is None:
            return None
        started_at, anchor_id = anchor
        sessions = sessions.filter(Q(started_at__lt=started_at) | Q(started_at=started_at, id__lt=anchor_id))
    rows = list(sessions[: limit + 1])
    return SessionPage(items=rows[:limit], has_more=len(rows) > limit)


def realtime_session_live_count(*, tenant: Tenant) -> int:
    return RealtimeSession.objects.filter(tenant=tenant, status=RealtimeSession.Status.ACTIVE).count()
