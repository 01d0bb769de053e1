"""Reads of the audit trail for the viewer, exports and reports. Always scoped to one tenant.

Pages are keyset-paginated on `seq`, newest first. Every filter is served by an index that
leads with `chain` and ends with `seq` (see AuditEvent.Meta), and a time range is turned into a
range of seq first (a chain's timestamps never go backwards), so a page costs a few index reads
whether the tenant has a thousand rows or fifty million.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import Count, Max, Min, QuerySet
from django.utils.dateparse import parse_date, parse_datetime

from audit.chain import canonical_timestamp, chain_for
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from realtime_platform.errors import BadRequest

if TYPE_CHECKING:
    from tenants.models import Tenant

ACTOR_TYPES = ("user", "api_key", "system")
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_CURSOR = re.compile(r"^([on])(\d{1,18})$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Actions a compliance reader looks for first: refusals, failures, revocations and every change
# of who may do what.
NOTABLE_SUFFIXES = (".refused", ".failed", ".login_failed", ".revoked", ".suspended", ".deleted", ".removed")
NOTABLE_PREFIXES = (
    "policy.",
    "quota.",
    "member.",
    "upstream_credential.",
    "audit.",
    "export.",
    "tenant.",
    "plan.",
    "key.",
    "alert.",
)


@dataclass(frozen=True)
class AuditFilter:
    """What the viewer and the exports select. `since` is inclusive, `until` exclusive (a date
    given alone as `until` means up to the end of that day). Strings match exactly; empty
    means "any"."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str = ""
    actor_type: str = ""
    action: str = ""
    target_type: str = ""
    target_id: str = ""
    request_id: str = ""

    EQUALITY = ("actor", "actor_type", "action", "target_type", "target_id", "request_id")

    @property
    def is_range_only(self) -> bool:
        """True when the selection is every row between two points of the chain, so its rows
        link to one another (an export of it can be verified link by link)."""
        return not any(getattr(self, name) for name in self.EQUALITY)

    def as_dict(self) -> dict[str, Any]:
        """Only what is set, timestamps in canonical UTC form: for manifests and audit details."""
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if isinstance(value, datetime):
                out[name] = canonical_timestamp(value)
            elif value:
                out[name] = value
        return out

    def describe(self) -> str:
        parts = [f"{key}={value}" for key, value in self.as_dict().items()]
        return ", ".join(parts) if parts else "everything"


def _parse_moment(name: str, value: str, *, end_of_day: bool) -> datetime:
    problem = BadRequest(
        f"{name} must be an ISO 8601 date or date-time, e.g. 2026-11-26 or 2026-11-26T09:30:00Z.", param=name
    )
    try:
        # A date alone first: Python would read it as that day's midnight too.
        day = parse_date(value) if _DATE_ONLY.match(value) else None
        moment = parse_datetime(value) if day is None else None
    except ValueError as exc:  # well-formed but impossible, such as month 13
        raise problem from exc
    if moment is None:
        if day is None:
            raise problem
        moment = datetime.combine(day, time.min)
        if end_of_day:
            moment += timedelta(days=1)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def audit_filter_from_params(params: Mapping[str, Any]) -> AuditFilter:
    """An AuditFilter from query parameters (a QueryDict or dict of strings). Unknown parameters
    are ignored; bad values raise BadRequest naming the parameter."""

    def text(name: str, limit: int) -> str:
        value = params.get(name) or ""
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string.", param=name)
        value = value.strip()
        if len(value) > limit:
            raise BadRequest(f"{name} must be at most {limit} characters.", param=name)
        return value

    since_raw, until_raw = text("since", 64), text("until", 64)
    since = _parse_moment("since", since_raw, end_of_day=False) if since_raw else None
    until = _parse_moment("until", until_raw, end_of_day=True) if until_raw else None
    if since is not None and until is not None and since >= until:
        raise BadRequest("since must be earlier than until.", param="since")
    actor_type = text("actor_type", 16)
    if actor_type and actor_type not in ACTOR_TYPES:
        raise BadRequest(f"actor_type must be one of {', '.join(ACTOR_TYPES)}.", param="actor_type")
    return AuditFilter(
        since=since,
        until=until,
        actor=text("actor", 200),
        actor_type=actor_type,
        action=text("action", 64),
        target_type=text("target_type", 64),
        target_id=text("target_id", 64),
        request_id=text("request_id", 128),
    )


@dataclass(frozen=True)
class SeqRange:
    low: int
    high: int


def audit_seq_range(*, tenant: Tenant, filters: AuditFilter, up_to: int | None = None) -> SeqRange | None:
    """The seq range the time part of `filters` covers (None: no row can match). Two index
    reads on (chain, created_at, seq)."""
    chain = chain_for(tenant.pk)
    rows = AuditEvent.objects.filter(chain=chain)
    low, high = 1, up_to if up_to is not None else 2**62
    if filters.since is not None:
        first = (
            rows.filter(created_at__gte=filters.since)
            .order_by("created_at", "seq")
            .values_list("seq", flat=True)
            .first()
        )
        if first is None:
            return None
        low = first
    if filters.until is not None:
        last = (
            rows.filter(created_at__lt=filters.until)
            .order_by("-created_at", "-seq")
            .values_list("seq", flat=True)
            .first()
        )
        if last is None:
            return None
        high = min(high, last)
    return SeqRange(low, high) if low <= high else None


def audit_event_queryset(
    *, tenant: Tenant, filters: AuditFilter, seq_range: SeqRange
) -> QuerySet[AuditEvent]:
    rows = AuditEvent.objects.filter(
        chain=chain_for(tenant.pk), seq__gte=seq_range.low, seq__lte=seq_range.high
    )
    if filters.actor:
        rows = rows.filter(actor_label=filters.actor)
    if filters.actor_type:
        rows = rows.filter(actor_type=filters.actor_type)
    if filters.action:
        rows = rows.filter(action=filters.action)
    if filters.target_type:
        rows = rows.filter(target_type=filters.target_type)
    if filters.target_id:
        rows = rows.filter(target_id=filters.target_id)
    if filters.request_id:
        rows = rows.filter(request_id=filters.request_id)
    return rows


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_cursor: str | None  # older events
    prev_cursor: str | None  # newer events
    filters: AuditFilter = field(default_factory=AuditFilter)


def audit_event_page(
    *, tenant: Tenant, filters: AuditFilter | None = None, cursor: str | None = None, limit: int = PAGE_SIZE
) -> AuditPage:
    """One page of the tenant's events, newest first. `cursor` is a page's `next_cursor` (older)
    or `prev_cursor` (newer); anything else is a BadRequest (param "cursor")."""
    filters = filters or AuditFilter()
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}.", param="limit")
    direction, position = "o", None
    if cursor:
        match = _CURSOR.match(cursor)
        if match is None:
            raise BadRequest("Invalid cursor: use the next or previous link of a page.", param="cursor")
        direction, position = match.group(1), int(match.group(2))
    seq_range = audit_seq_range(tenant=tenant, filters=filters)
    if seq_range is None:
        return AuditPage(events=[], next_cursor=None, prev_cursor=None, filters=filters)
    rows = audit_event_queryset(tenant=tenant, filters=filters, seq_range=seq_range)
    if direction == "n" and position is not None:
        events = list(rows.filter(seq__gt=position).order_by("seq")[: limit + 1])
        newer_exists = len(events) > limit
        events = events[:limit][::-1]
        older_exists = bool(events) and rows.filter(seq__lt=events[-1].seq).exists()
    else:
        rows_before = rows.filter(seq__lt=position) if position is not None else rows
        events = list(rows_before.order_by("-seq")[: limit + 1])
        older_exists = len(events) > limit
        events = events[:limit]
        newer_exists = position is not None and bool(events) and rows.filter(seq__gt=events[0].seq).exists()
    return AuditPage(
        events=events,
        next_cursor=f"o{events[-1].seq}" if older_exists else None,
        prev_cursor=f"n{events[0].seq}" if newer_exists else None,
        filters=filters,
    )


def audit_event_get(*, tenant: Tenant, seq: int) -> AuditEvent | None:
    return AuditEvent.objects.filter(chain=chain_for(tenant.pk), seq=seq).first()


def audit_actions_seen(*, tenant: Tenant) -> list[str]:
    """The distinct actions in the tenant's trail (for a filter drop-down). On PostgreSQL a
    skip scan over (chain, action, seq): one index probe per distinct action."""
    chain = chain_for(tenant.pk)
    if connection.vendor != "postgresql":
        return sorted(AuditEvent.objects.filter(chain=chain).values_list("action", flat=True).distinct())
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH RECURSIVE actions(action) AS (
                (SELECT action FROM audit_auditevent WHERE chain = %s ORDER BY action LIMIT 1)
                UNION ALL
                SELECT (SELECT e.action FROM audit_auditevent e
                        WHERE e.chain = %s AND e.action > actions.action ORDER BY e.action LIMIT 1)
                FROM actions WHERE actions.action IS NOT NULL
            )
            SELECT action FROM actions WHERE action IS NOT NULL
            """,
            [chain, chain],
        )
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True)
class AuditSummary:
    """Counts over a selection, for the PDF report and dashboards."""

    total: int
    first_seq: int | None
    last_seq: int | None
    first_at: datetime | None
    last_at: datetime | None
    by_action: list[tuple[str, int]]
    by_actor: list[tuple[str, str, int]]
    notable_total: int
    notable: list[AuditEvent]


def is_notable(action: str) -> bool:
    return action.endswith(NOTABLE_SUFFIXES) or action.startswith(NOTABLE_PREFIXES)


def audit_summary(*, tenant: Tenant, filters: AuditFilter, notable_limit: int = 100) -> AuditSummary:
    seq_range = audit_seq_range(tenant=tenant, filters=filters)
    if seq_range is None:
        return AuditSummary(0, None, None, None, None, [], [], 0, [])
    rows = audit_event_queryset(tenant=tenant, filters=filters, seq_range=seq_range)
    span = rows.aggregate(total=Count("id"), first=Min("seq"), last=Max("seq"))
    by_action = [
        (row["action"], row["n"])
        for row in rows.values("action").annotate(n=Count("id")).order_by("-n", "action")
    ]
    by_actor = [
        (row["actor_type"], row["actor_label"], row["n"])
        for row in rows.values("actor_type", "actor_label")
        .annotate(n=Count("id"))
        .order_by("-n", "actor_label")
    ]
    notable_actions = [action for action, _ in by_action if is_notable(action)]
    notable_rows = rows.filter(action__in=notable_actions)
    ends = {
        e.seq: e.created_at
        for e in AuditEvent.objects.filter(
            chain=chain_for(tenant.pk), seq__in=[s for s in (span["first"], span["last"]) if s is not None]
        ).only("seq", "created_at")
    }
    return AuditSummary(
        total=span["total"],
        first_seq=span["first"],
        last_seq=span["last"],
        first_at=ends.get(span["first"]),
        last_at=ends.get(span["last"]),
        by_action=by_action,
        by_actor=by_actor,
        notable_total=sum(n for action, n in by_action if is_notable(action)),
        notable=list(notable_rows.order_by("-seq")[:notable_limit]) if notable_actions else [],
    )


def audit_chain_head(*, tenant: Tenant) -> AuditChainHead | None:
    return AuditChainHead.objects.filter(chain=chain_for(tenant.pk)).first()


def audit_checkpoint_list(*, tenant: Tenant) -> QuerySet[AuditCheckpoint]:
    return AuditCheckpoint.objects.filter(chain=chain_for(tenant.pk)).order_by("-id")


def audit_filter_with(filters: AuditFilter, **changes: Any) -> AuditFilter:
    """A copy of `filters` with some fields changed (for links such as "same actor")."""
    return replace(filters, **changes)
