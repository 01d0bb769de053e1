from __future__ import annotations

from celery import shared_task


@shared_task(name="tokens.tasks.client_secret_expire_sweep", ignore_result=True)
def client_secret_expire_sweep() -> int:
    from tokens.services import client_secret_expire_sweep as sweep

    return sweep()


@shared_task(name="tokens.tasks.idempotency_purge", ignore_result=True)
def idempotency_purge() -> int:
    from tokens.idempotency import idempotency_purge as purge

    return purge()
