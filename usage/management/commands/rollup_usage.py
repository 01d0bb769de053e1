from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from realtime_platform.durations import parse_duration
from realtime_platform.locks import job_lock
from realtime_platform.progress import progress_bar
from tenants.models import Tenant
from usage.rollups import (
    usage_rollup_backfill,
    usage_rollup_backfill_plan,
    usage_rollup_pending_count,
    usage_rollup_run,
)


def parse_moment(text: str, *, now: datetime) -> datetime:
    """`2026-03-01`, `2026-03-01T12:00:00Z` (naive means UTC), or a duration back from now (`7d`)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    moment = parse_datetime(text)
    if moment is None:
        day = parse_date(text)
        if day is None:
            raise CommandError(f"{text!r} is not a date, a date-time or a duration like 7d")
        moment = datetime(day.year, day.month, day.day)
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Roll usage up into hourly and daily buckets. Without --since: process the hours marked "
        "pending (what the beat job does). With --since: recompute every bucket of the tenants' "
        "local days from that day on (a backfill; safe to repeat)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="2026-03-01, 2026-03-01T12:00Z or a duration back from now (30d)")
        parser.add_argument("--until", help="end of the backfill (default: now)")
        parser.add_argument(
            "--tenant", action="append", default=[], help="tenant slug (repeatable; default all)"
        )
        parser.add_argument("--slab-days", type=int, default=7, help="days recomputed per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        if options["tenant"] and not options["since"]:
            raise CommandError("--tenant needs --since (the incremental run covers every tenant)")
        with job_lock("usage-rollup", ttl=3600) as acquired:
            if not acquired:
                raise CommandError("another rollup is running (beat or another command); try again shortly")
            if not options["since"]:
                with progress_bar(
                    total=usage_rollup_pending_count(), desc="rollup", unit="hour", stream=self.stderr
                ) as advance:
                    stats = usage_rollup_run(progress=advance)
                self.stdout.write(
                    f"rolled up {stats.hours_claimed} pending hours: {stats.hour_rows} hourly and "
                    f"{stats.day_rows} daily rows written"
                )
                return
            since = parse_moment(options["since"], now=now)
            until = parse_moment(options["until"], now=now) if options["until"] else now
            if since >= until:
                raise CommandError("--since must be before --until")
            tenant_ids = None
            if options["tenant"]:
                found = dict(Tenant.objects.filter(slug__in=options["tenant"]).values_list("slug", "id"))
                missing = sorted(set(options["tenant"]) - set(found))
                if missing:
                    raise CommandError(f"no tenant with slug {', '.join(missing)}")
                tenant_ids = list(found.values())
            plan = usage_rollup_backfill_plan(
                since=since, until=until, tenant_ids=tenant_ids, slab_days=options["slab_days"]
            )
            with progress_bar(total=plan.steps, desc="backfill", unit="slab", stream=self.stderr) as advance:
                stats = usage_rollup_backfill(plan=plan, since=since, until=until, now=now, progress=advance)
        self.stdout.write(
            f"recomputed {stats.hour_rows} hourly and {stats.day_rows} daily rows for "
            f"{len(plan.tenant_ids)} tenants since {since.isoformat()}"
        )
