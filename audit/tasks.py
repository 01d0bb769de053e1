"""Periodic jobs of the audit trail (beat entries in settings.CELERY_BEAT_SCHEDULE). Each calls
one service; all are safe to run twice or concurrently."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="audit.tasks.audit_checkpoint_heads", ignore_result=True)
def audit_checkpoint_heads() -> int:
    from audit.services import audit_checkpoint_heads as checkpoint

    return checkpoint()


@shared_task(name="audit.tasks.audit_verify_chains", ignore_result=True)
def audit_verify_chains() -> int:
    """Returns the number of broken chains (each also logged and audited)."""
    from audit.services import audit_chains_verify

    return sum(1 for report in audit_chains_verify() if not report.ok)


@shared_task(name="audit.tasks.audit_purge_expired", ignore_result=True, time_limit=3 * 3600)
def audit_purge_expired() -> int:
    """Returns the number of rows purged."""
    from audit.services import audit_purge_expired as purge

    return sum(result.deleted for result in purge())
