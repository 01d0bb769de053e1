"""`manage.py serve` gives daphne and uvicorn the relay's WebSocket settings, so a dead peer is found
by ping within 30 s and the relay's own size limit answers before the server's."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command

DAPHNE_TIMEOUT_CHECK_SECONDS = 2  # daphne looks at ping deadlines every 2 s


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(
        "daphne.cli.CommandLineInterface.run", lambda self, argv: calls.setdefault("daphne", argv)
    )
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.setdefault("uvicorn", (app, kwargs)))
    return calls


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_daphne_gets_pings_and_a_size_limit_above_the_relays(captured, settings):
    call_command("serve", "--no-worker", "--server", "daphne", "--port", "9999")
    argv = captured["daphne"]
    interval, timeout = int(option(argv, "--ping-interval")), int(option(argv, "--ping-timeout"))
    assert interval + timeout + DAPHNE_TIMEOUT_CHECK_SECONDS <= 30  # a dead peer is dropped within 30 s
    assert int(option(argv, "--websocket-max-message-size")) > settings.RELAY_MAX_FRAME_BYTES
    assert argv[-1] == "realtime_platform.asgi:application"
    assert "--proxy-headers" not in argv


def test_uvicorn_gets_the_same_settings(captured, settings):
    call_command("serve", "--no-worker", "--server", "uvicorn", "--port", "9999", "--proxy-headers")
    app, options = captured["uvicorn"]
    assert app == "realtime_platform.asgi:application"
    assert options["ws_ping_interval"] + options["ws_ping_timeout"] <= 30
    assert options["ws_max_size"] > settings.RELAY_MAX_FRAME_BYTES
    assert options["ws_max_queue"] == settings.RELAY_INBOUND_QUEUE
    assert options["ws_per_message_deflate"] is False
    assert options["proxy_headers"] is True


def test_the_server_comes_from_the_environment(captured, settings):
    settings.ASGI_SERVER = "uvicorn"
    from realtime_platform.management.commands.serve import Command

    parser = Command().create_parser("manage.py", "serve")
    assert parser.parse_args([]).server == "uvicorn"
