from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from realtime_platform.locks import job_lock, lock_backend, run_exclusive


def held_elsewhere(backend, name, inside):
    """Hold the lock in another thread (another connection) while `inside()` runs here."""
    taken, release = threading.Event(), threading.Event()

    def holder():
        try:
            with job_lock(name, ttl=30, backend=backend) as acquired:
                assert acquired
                taken.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    assert taken.wait(10)
    try:
        return inside()
    finally:
        release.set()
        thread.join()


def exclusive_check(backend, name):
    def try_it():
        with job_lock(name, ttl=30, backend=backend) as acquired:
            return acquired

    assert held_elsewhere(backend, name, try_it) is False
    assert try_it() is True  # free again once the holder is done

    def failing_job():
        with job_lock(name, ttl=30, backend=backend) as acquired:
            assert acquired
            raise RuntimeError("job failed")

    with pytest.raises(RuntimeError):  # released when the job fails, too
        failing_job()
    assert try_it() is True


def test_file_lock_is_exclusive(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    exclusive_check("file", "test-file-lock")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_advisory_lock_is_exclusive():
    exclusive_check("postgres", "test-advisory-lock")


@pytest.mark.redis
def test_redis_lock_is_exclusive():
    exclusive_check("redis", "test-redis-lock")


@pytest.mark.redis
def test_redis_lock_expires_after_its_ttl_if_the_holder_vanished():
    import time

    with job_lock("test-redis-ttl", ttl=0.3, backend="redis") as acquired:
        assert acquired
        time.sleep(0.5)
        with job_lock("test-redis-ttl", ttl=0.3, backend="redis") as second:
            assert second  # the first holder's TTL ran out


def test_backend_follows_the_configuration(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/3"
    assert lock_backend() == "redis"
    settings.REDIS_URL = ""
    assert lock_backend() == ("postgres" if connection.vendor == "postgresql" else "file")


def test_bad_names_are_refused():
    with pytest.raises(ValueError), job_lock("../etc/passwd", ttl=1):
        pass


@pytest.mark.django_db(transaction=True)
def test_a_task_whose_lock_is_held_does_nothing(tenant):
    from tokens.models import ClientSecret
    from tokens.tasks import client_secret_expire_sweep

    ClientSecret.objects.create(
        tenant=tenant,
        kind="relay",
        fingerprint="f" * 64,
        last_four="abcd",
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    result = held_elsewhere(
        lock_backend(), "client-secret-expire-sweep", lambda: client_secret_expire_sweep.apply().get()
    )
    assert result is None
    assert ClientSecret.objects.get().status == "active"
    assert run_exclusive("client-secret-expire-sweep", lambda: "ran", ttl=5) == "ran"
    assert client_secret_expire_sweep.apply().get() == 1
