"""Serve the platform: daphne (HTTP + WebSocket) in this process, plus a Celery worker with an
embedded beat in a child process, so periodic jobs run with nothing else started. Without
REDIS_URL the worker's broker is a folder (kombu filesystem transport); with it, Redis."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run daphne on HOST:PORT and, unless --no-worker, a Celery worker with beat beside it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--no-worker", action="store_true", help="serve HTTP/WebSocket only")

    def _start_worker(self) -> subprocess.Popen[bytes]:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "realtime_platform",
            "worker",
            "--beat",
            "--schedule",
            settings.CELERY_BEAT_SCHEDULE_FILENAME,
            "--pool",
            "threads",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO" if settings.DEBUG else "WARNING",
        ]
        return subprocess.Popen(command)  # noqa: S603  (fixed argv, no shell)

    def handle(self, *args: Any, **options: Any) -> None:
        from daphne.cli import CommandLineInterface

        worker = None if options["no_worker"] else self._start_worker()
        self.stdout.write(
            f"Serving on http://{options['host']}:{options['port']} "
            f"(upstream: {'built-in emulator' if settings.UPSTREAM_EMULATOR else settings.OPENAI_BASE_URL}; "
            f"broker: {'Redis' if settings.REDIS_URL else 'embedded'}; worker: {'on' if worker else 'off'})"
        )
        try:
            CommandLineInterface().run(
                [
                    "--bind",
                    options["host"],
                    "--port",
                    str(options["port"]),
                    settings.ASGI_APPLICATION.replace(".application", ":application"),
                ]
            )
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()
