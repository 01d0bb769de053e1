"""Celery tasks of the usage app. Each calls one service under a job lock (see
realtime_platform/celery.py); beat entries are in settings.BEAT_JOBS."""

from __future__ import annotations

from celery import shared_task

from realtime_platform.celery import SWEEP_TASK_OPTIONS, locked


@shared_task(name="usage.tasks.usage_rollup_run", **SWEEP_TASK_OPTIONS)
def usage_rollup_run() -> int | None:
    from usage.rollups import usage_rollup_run as run

    stats = locked("usage-rollup", run)
    return None if stats is None else stats.hours_claimed


@shared_task(name="usage.tasks.quota_alerts_evaluate", **SWEEP_TASK_OPTIONS)
def quota_alerts_evaluate() -> int | None:
    from usage.alerts import quota_alerts_evaluate as evaluate

    return locked("quota-alerts-evaluate", evaluate)


@shared_task(name="usage.tasks.alert_deliveries_send", **SWEEP_TASK_OPTIONS)
def alert_deliveries_send() -> int | None:
    from usage.alerts import alert_deliveries_send as send

    stats = locked("alert-deliveries", send)
    return None if stats is None else stats.sent


@shared_task(name="usage.tasks.usage_events_purge", **SWEEP_TASK_OPTIONS)
def usage_events_purge() -> int | None:
    from usage.retention import usage_events_purge as purge

    return locked("usage-events-purge", purge)


@shared_task(name="usage.tasks.quota_counters_purge", **SWEEP_TASK_OPTIONS)
def quota_counters_purge() -> int | None:
    from usage.retention import quota_counters_purge as purge

    return locked("quota-counters-purge", purge)
