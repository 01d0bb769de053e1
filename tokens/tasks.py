from __future__ import annotations

from celery import shared_task


@shared_task(name="tokens.tasks.client_secret_expire_sweep", ignore_result=True)
def client_secret_expire_sweep() -> int:
    from tokens.services import client_secret_expire_sweep as sweep

    return sweep()
