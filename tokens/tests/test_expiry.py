from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from tokens.models import ClientSecret
from tokens.services import _expire_backlog_by_blocks, client_secret_expire_sweep


def make_secrets(tenant, n, *, expires_in, status=ClientSecret.Status.ACTIVE, prefix="s"):
    now = timezone.now()
    ClientSecret.objects.bulk_create(
        [
            ClientSecret(
                tenant=tenant,
                kind=ClientSecret.Kind.RELAY,
                fingerprint=f"{prefix}{status}{i:06d}".ljust(64, "0"),
                last_four="abcd",
                status=status,
                expires_at=now + expires_in,
            )
            for i in range(n)
        ]
    )


def statuses(tenant):
    return {
        status: ClientSecret.objects.filter(tenant=tenant, status=status).count()
        for status in ClientSecret.Status
    }


@pytest.mark.django_db
def test_only_active_secrets_past_expiry_expire_in_batches(tenant, other_tenant):
    make_secrets(tenant, 7, expires_in=-timedelta(seconds=1))
    make_secrets(other_tenant, 3, expires_in=-timedelta(hours=1), prefix="o")
    make_secrets(tenant, 4, expires_in=timedelta(minutes=5), prefix="f")  # not yet
    make_secrets(tenant, 2, expires_in=-timedelta(hours=1), status=ClientSecret.Status.REVOKED)
    make_secrets(tenant, 2, expires_in=-timedelta(hours=1), status=ClientSecret.Status.USED)
    batches = []

    assert client_secret_expire_sweep(batch_size=3, progress=batches.append) == 10

    assert sum(batches) == 10
    assert max(batches) == 3
    assert statuses(tenant) == {"active": 4, "expired": 7, "revoked": 2, "used": 2}
    assert statuses(other_tenant)["expired"] == 3
    assert client_secret_expire_sweep() == 0  # idempotent


@pytest.mark.django_db
def test_a_secret_expires_at_its_expiry_instant(tenant):
    make_secrets(tenant, 1, expires_in=timedelta(seconds=30))
    secret = ClientSecret.objects.get(tenant=tenant)
    assert client_secret_expire_sweep(now=secret.expires_at - timedelta(microseconds=1)) == 0
    assert client_secret_expire_sweep(now=secret.expires_at) == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_expire_each_secret_once(tenant):
    make_secrets(tenant, 3000, expires_in=-timedelta(seconds=1))
    counts = []
    barrier = threading.Barrier(4)

    def sweep():
        barrier.wait()
        try:
            counts.append(client_secret_expire_sweep(batch_size=200))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 3000
    assert statuses(tenant)["expired"] == 3000


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_large_backlog_is_swept_in_block_ranges(tenant, other_tenant):
    """Most of the table due (after downtime): the sweep goes through physical block ranges of
    about `batch_size` rows, and still only active secrets past their expiry change."""
    from django.db import connection

    make_secrets(tenant, 2000, expires_in=-timedelta(minutes=1))
    make_secrets(tenant, 300, expires_in=timedelta(minutes=5), prefix="f")
    make_secrets(other_tenant, 200, expires_in=-timedelta(minutes=1), status=ClientSecret.Status.REVOKED)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tokens_clientsecret")
    batches = []

    # the backlog path alone takes all of it, in block ranges of about 200 rows
    assert _expire_backlog_by_blocks(timezone.now(), 200, batches.append) == 2000
    assert len(batches) >= 5
    assert max(batches) <= 400
    assert client_secret_expire_sweep(batch_size=200) == 0
    assert statuses(tenant) == {"active": 300, "expired": 2000, "revoked": 0, "used": 0}
    assert statuses(other_tenant)["revoked"] == 200


@pytest.mark.django_db
def test_sweep_expired_command_reports_what_it_did(tenant, capsys):
    make_secrets(tenant, 5, expires_in=-timedelta(seconds=1))
    call_command("sweep_expired")
    out, err = capsys.readouterr()
    assert "expired 5 client secrets; ended 0 stale relay sessions" in out
    assert "secrets: 100%" in err  # the progress bar
    assert statuses(tenant)["expired"] == 5
