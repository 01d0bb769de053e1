"""Reads of relay sessions, always for one tenant."""

from __future__ import annotations

from django.db.models import QuerySet

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
