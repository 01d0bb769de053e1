"""Serve the built-in OpenAI Realtime emulator on its own (for tests, benchmarks, or pointing an
app at a fake OpenAI): `python manage.py run_emulator --port 8010`, then use base URL
http://127.0.0.1:8010/v1 with the key it accepts (settings.UPSTREAM_EMULATOR_API_KEY, or --api-key)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from upstream.emulator import Emulator, EmulatorConfig
from upstream.emulator.state import mask_key

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Serve the OpenAI Realtime emulator (REST and WebSocket) with daphne on HOST:PORT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8010, help="0 picks a free port (printed)")
        parser.add_argument(
            "--api-key",
            action="append",
            default=[],
            help="a key to accept (repeatable); default: settings.UPSTREAM_EMULATOR_API_KEY",
        )
        parser.add_argument("--show-key", action="store_true", help="print the accepted key in full")
        parser.add_argument("--max-session-seconds", type=float, default=3600.0)
        parser.add_argument(
            "--realtime-factor",
            type=float,
            default=None,
            help="pace response audio (1 = real time); default: as fast as possible",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from daphne.server import Server

        keys = options["api_key"] or [settings.UPSTREAM_EMULATOR_API_KEY]
        emulator = Emulator(
            api_keys=set(keys),
            config=EmulatorConfig(
                max_session_seconds=options["max_session_seconds"],
                realtime_factor=options["realtime_factor"],
            ),
        )
        stdout = self.stdout
        shown = keys[0] if options["show_key"] else mask_key(keys[0])

        class AnnouncingServer(Server):  # type: ignore[misc]
            def listen_success(self, port: Any) -> None:
                super().listen_success(port)
                host = port.getHost()
                stdout.write(f"OpenAI emulator on http://{host.host}:{host.port}/v1 (key {shown})")
                stdout.flush()

        AnnouncingServer(
            application=emulator,
            endpoints=[f"tcp:port={options['port']}:interface={options['host']}"],
            signal_handlers=True,
            verbosity=0,
            websocket_max_message_size=32 * 1024 * 1024,
            websocket_max_frame_size=32 * 1024 * 1024,
        ).run()
