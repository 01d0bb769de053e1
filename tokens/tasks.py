"""Celery tasks of the tokens app: interfaces that call one service each (see realtime_platform/celery.py
for the shared options: acks_late, time limits, and the job lock every sweep runs under)."""

from __future__ import annotations

from celery import shared_task

from realtime_platform.celery import SWEEP_TASK_OPTIONS, locked


@shared_task(name="tokens.tasks.client_secret_expire_sweep", **SWEEP_TASK_OPTIONS)
def client_secret_expire_sweep() -> int | None:
    from tokens.services import client_secret_expire_sweep as sweep

    return locked("client-secret-expire-sweep", sweep)


@shared_task(name="tokens.tasks.idempotency_purge", **SWEEP_TASK_OPTIONS)
def idempotency_purge() -> int | None:
    from tokens.idempotency import idempotency_purge as purge

    return locked("idempotency-purge", purge)
