"""The Celery app. Broker: Redis when REDIS_URL is set, otherwise a folder (kombu's filesystem
transport), so the embedded run has a real worker and beat without any server. The beat schedule
lives in settings.CELERY_BEAT_SCHEDULE; each entry calls one service through its task.

Periodic jobs share SWEEP_TASK_OPTIONS and run under `locked(...)`:
- acks_late + reject_on_worker_lost: a worker lost mid-run means the message is delivered again,
  which is safe because every job is idempotent (conditional updates, unique keys, claims);
- a hard time limit below the broker's visibility timeout (1 h), so a redelivery never starts
  while the first run is still alive;
- a job lock (realtime_platform/locks.py) so two beat instances, or a beat entry and an
  operator's command, never run the same sweep at the same time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_platform.settings")

app = Celery("realtime_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

T = TypeVar("T")

SWEEP_TIME_LIMIT = 15 * 60
SWEEP_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "time_limit": SWEEP_TIME_LIMIT,
    "soft_time_limit": SWEEP_TIME_LIMIT - 60,
}


def locked(name: str, job: Callable[[], T]) -> T | None:
    """Run `job` under the job lock `name` (None when another run holds it). The lock outlives
    the task's hard time limit, so it never expires under a run that is still going."""
    from realtime_platform.locks import run_exclusive

    return run_exclusive(name, job, ttl=SWEEP_TIME_LIMIT + 60)
