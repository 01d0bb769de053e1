"""Celery tasks of the relay app owned by the jobs work: the stale-session sweep."""

from __future__ import annotations

from celery import shared_task

from realtime_platform.celery import SWEEP_TASK_OPTIONS, locked


@shared_task(name="relay.tasks.realtime_session_stale_sweep", **SWEEP_TASK_OPTIONS)
def realtime_session_stale_sweep() -> int | None:
    from relay.sweeps import realtime_session_stale_sweep as sweep

    return locked("realtime-session-stale-sweep", sweep)
