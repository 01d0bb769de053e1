"""Background jobs run for real: a Celery worker process on the Redis broker, and the embedded
worker + beat that `make run` starts (filesystem broker), both observed through PostgreSQL.

The worker is a subprocess pointed at the test database, so these tests need PostgreSQL (an
in-memory SQLite database cannot be shared with another process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from audit.actors import Actor
from relay.models import RealtimeSession
from tenants.services import quota_override_update
from tokens.models import ClientSecret
from usage.alerts import alert_settings_update, webhook_signature_verify
from usage.models import AlertDelivery, Metric, UsageRollup
from usage.services import quota_reserve
from usage.tests.helpers import record
from usage.tests.test_alerts import Receiver

ROOT = Path(django_settings.BASE_DIR)


def test_database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


test_database_url.__test__ = False  # type: ignore[attr-defined]  (a helper, not a test)


def wait_for(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    raise AssertionError(f"jobs did not take effect in {timeout}s; worker log:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def seed(tenant) -> tuple[ClientSecret, RealtimeSession]:
    secret = ClientSecret.objects.create(
        tenant=tenant,
        kind="relay",
        fingerprint="e" * 64,
        last_four="abcd",
        expires_at=timezone.now() - timedelta(seconds=5),
    )
    quota_reserve(tenant=tenant, metric=Metric.SESSIONS)
    session = RealtimeSession.objects.create(
        tenant=tenant, model="gpt-realtime", last_seen_at=timezone.now() - timedelta(hours=1)
    )
    record(tenant, timezone.now() - timedelta(minutes=5), input_text=321)
    return secret, session


def effects_visible(secret: ClientSecret, session: RealtimeSession) -> Callable[[], bool]:
    def check() -> bool:
        secret.refresh_from_db()
        session.refresh_from_db()
        rolled = UsageRollup.objects.filter(
            tenant_id=secret.tenant_id, granularity="day", input_text_tokens=321
        )
        return secret.status == "expired" and session.end_reason == "stale" and rolled.exists()

    return check


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_worker_on_the_redis_broker_runs_the_jobs(tenant, tmp_path):
    from relay.tasks import realtime_session_stale_sweep
    from tokens.tasks import client_secret_expire_sweep
    from usage.tasks import usage_rollup_run

    secret, session = seed(tenant)
    queue = f"test-jobs-{uuid.uuid4().hex[:12]}"  # a private queue on the shared broker database
    log = tmp_path / "worker.log"
    env = {**os.environ, "DATABASE_URL": test_database_url(), "REDIS_URL": django_settings.REDIS_URL}
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "realtime_platform",
        "worker",
        "--pool",
        "solo",
        "-Q",
        queue,
        "--without-heartbeat",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for task in (client_secret_expire_sweep, realtime_session_stale_sweep, usage_rollup_run):
            task.apply_async(queue=queue)
        wait_for(effects_visible(secret, session), 60, proc, log)
    finally:
        stop(proc)
    assert "succeeded" in log.read_text()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_make_runs_embedded_worker_and_beat_fire_every_job(tenant, tmp_path, monkeypatch, settings):
    """`manage.py serve` starts this exact worker (with --beat) beside daphne. With no REDIS_URL
    its broker is a folder; every beat entry fires and its task succeeds, end to end up to a signed
    quota alert reaching a local webhook. Intervals are shortened to 6 s (about two messages a
    second for the folder broker, polled five times a second; the real schedule sends about one
    message per 10 s)."""
    from realtime_platform.management.commands.serve import Command as Serve

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True
    settings.ALERT_WEBHOOK_REQUIRE_HTTPS = False
    secret, session = seed(tenant)
    quota_override_update(tenant=tenant, actor=Actor.system("tests"), values={"tokens_per_month": 1000})
    quota_reserve(tenant=tenant, metric=Metric.TOKENS, amount=600)
    intervals = ",".join(f"{name}=6" for name in django_settings.BEAT_JOBS)
    for name, value in {
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": "",
        "RTP_VAR_DIR": str(tmp_path),
        "RTP_BEAT_INTERVALS": intervals,
        "RTP_ALERT_WEBHOOK_ALLOW_PRIVATE": "true",
        "RTP_ALERT_WEBHOOK_REQUIRE_HTTPS": "false",
        "DJANGO_LOG_LEVEL": "INFO",
    }.items():
        monkeypatch.setenv(name, value)
    settings.CELERY_BEAT_SCHEDULE_FILENAME = str(tmp_path / "celerybeat-schedule")
    settings.DEBUG = True  # serve's worker logs at INFO, so the log shows every task

    with Receiver() as receiver:
        webhook_secret = alert_settings_update(
            tenant=tenant, actor=Actor.system("tests"), webhook_url=receiver.url
        ).webhook_secret
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            monkeypatch.setattr(subprocess, "Popen", _popen_into(out))
            proc = Serve()._start_worker()
        expected = [
            (f"Sending due task {name} ({task})", f"Task {task}[")
            for name, (task, _) in django_settings.BEAT_JOBS.items()
        ]

        def every_job_fired_and_succeeded() -> bool:
            lines = log.read_text().splitlines()
            return all(
                any(sent in line for line in lines)
                and any(ran in line and "succeeded" in line for line in lines)
                for sent, ran in expected
            )

        try:
            wait_for(effects_visible(secret, session), 60, proc, log)
            wait_for(lambda: AlertDelivery.objects.filter(status="sent").exists(), 30, proc, log)
            wait_for(every_job_fired_and_succeeded, 30, proc, log)
        finally:
            stop(proc)
        (request,) = receiver.requests
    assert webhook_signature_verify(
        secret=webhook_secret, body=request["body"], header=request["headers"]["X-RTP-Signature"]
    )
    # 600 reserved + the seeded response's 331 tokens = 93.1 % of 1000: 50 and 80 crossed, 80 sent
    assert json.loads(request["body"])["threshold_percent"] == 80
    assert "redis" not in log.read_text().lower()
    assert (tmp_path / "celery-broker" / "queue").is_dir()  # the broker really was the folder


def _popen_into(out):
    real = subprocess.Popen

    def popen(command, **kwargs):
        return real(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, **kwargs)

    return popen
