"""Serve the platform: daphne or uvicorn (HTTP + WebSocket) in this process, plus a Celery worker
with an embedded beat in a child process, so periodic jobs run with nothing else started. Without
REDIS_URL the worker's broker is a folder (kombu filesystem transport); with it, Redis.

Both servers get the relay's WebSocket settings (keepalive pings, message-size limit, inbound
queue); README "Serving: daphne or uvicorn" compares them."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

logger = logging.getLogger(__name__)


class _DenialIsNotAnError(logging.Filter):
    """uvicorn 0.54 (websockets-sansio) logs "ASGI callable returned without completing handshake"
    after an application refused a handshake with the `websocket.http.response` extension, which is
    how the relay answers 401/403/429. The refusal itself is logged (and audited) by the relay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


class Command(BaseCommand):
    help = "Run daphne on HOST:PORT and, unless --no-worker, a Celery worker with beat beside it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--no-worker", action="store_true", help="serve HTTP/WebSocket only")
        parser.add_argument(
            "--server",
            choices=["daphne", "uvicorn"],
            default=settings.ASGI_SERVER,
            help="ASGI server (default: RTP_ASGI_SERVER, else daphne)",
        )
        parser.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-For/-Proto")

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
        worker = None if options["no_worker"] else self._start_worker()
        self.stdout.write(
            f"Serving on http://{options['host']}:{options['port']} with {options['server']} "
            f"(upstream: {'built-in emulator' if settings.UPSTREAM_EMULATOR else settings.OPENAI_BASE_URL}; "
            f"broker: {'Redis' if settings.REDIS_URL else 'embedded'}; worker: {'on' if worker else 'off'})"
        )
        try:
            if options["server"] == "uvicorn":
                self._uvicorn(options)
            else:
                self._daphne(options)
        finally:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    worker.kill()

    @staticmethod
    def _daphne(options: dict[str, Any]) -> None:
        from daphne.cli import CommandLineInterface

        argv = [
            "--bind",
            options["host"],
            "--port",
            str(options["port"]),
            # dead peers: a ping after this much silence, dropped when the pong is this late
            "--ping-interval",
            str(max(1, int(settings.RELAY_PING_INTERVAL))),
            "--ping-timeout",
            str(max(1, int(settings.RELAY_PING_TIMEOUT))),
            "--websocket-max-message-size",
            str(settings.RELAY_SERVER_MAX_MESSAGE_BYTES),
            "--websocket-max-frame-size",
            str(settings.RELAY_SERVER_MAX_MESSAGE_BYTES),
        ]
        if options["proxy_headers"]:
            argv.append("--proxy-headers")
        CommandLineInterface().run([*argv, settings.ASGI_APPLICATION.replace(".application", ":application")])

    @staticmethod
    def _uvicorn(options: dict[str, Any]) -> None:
        import uvicorn

        logging.getLogger("uvicorn.error").addFilter(_DenialIsNotAnError())
        uvicorn.run(
            settings.ASGI_APPLICATION.replace(".application", ":application"),
            host=options["host"],
            port=options["port"],
            lifespan="off",
            ws_max_size=settings.RELAY_SERVER_MAX_MESSAGE_BYTES,
            ws_max_queue=settings.RELAY_INBOUND_QUEUE,
            ws_ping_interval=settings.RELAY_PING_INTERVAL,
            ws_ping_timeout=settings.RELAY_PING_TIMEOUT,
            ws_per_message_deflate=False,  # audio does not compress; deflate would only burn CPU
            proxy_headers=options["proxy_headers"],
            forwarded_allow_ips="*" if options["proxy_headers"] else None,
            timeout_graceful_shutdown=20,
            server_header=False,
            log_config=None,  # Django's LOGGING (JSON, redaction, request ids) for uvicorn's loggers too
        )
