from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from realtime_platform.locks import job_lock
from realtime_platform.progress import progress_bar
from relay.sweeps import realtime_session_stale_count, realtime_session_stale_sweep
from tokens.services import client_secret_expire_due, client_secret_expire_sweep


class Command(BaseCommand):
    help = (
        "Expire client secrets past their expiry and end relay sessions whose process died "
        "(not seen for RTP_RELAY_STALE_SECONDS), releasing their concurrency slots. The same "
        "sweeps beat runs; safe to run at any time."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        with job_lock("client-secret-expire-sweep", ttl=3600) as acquired:
            if not acquired:
                raise CommandError("the secret expiry sweep is running already; try again shortly")
            with progress_bar(
                total=client_secret_expire_due(now=now), desc="secrets", unit="secret", stream=self.stderr
            ) as advance:
                secrets = client_secret_expire_sweep(now=now, progress=advance)
        with job_lock("realtime-session-stale-sweep", ttl=3600) as acquired:
            if not acquired:
                raise CommandError("the stale-session sweep is running already; try again shortly")
            with progress_bar(
                total=realtime_session_stale_count(now=now),
                desc="sessions",
                unit="session",
                stream=self.stderr,
            ) as advance:
                sessions = realtime_session_stale_sweep(now=now, progress=advance)
        self.stdout.write(f"expired {secrets} client secrets; ended {sessions} stale relay sessions")
