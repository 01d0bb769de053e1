"""Secret scanning (issue 9, item 5): after a full workflow through the live platform, no secret it
handled is anywhere at rest: not in a dump of the whole database, not in the logs, not in any export.

The workflow (the whole platform on daphne, the emulator standing in for OpenAI): API keys made
by the service layer, `manage.py create_api_key` and the console; the tenant's own OpenAI key
saved in the console; client secrets of both kinds issued over HTTP (a relay token, and an `ek_`
minted upstream with the tenant's own key); a relay session through `/v1/realtime` with the relay
token, streaming audio and getting a spoken answer; a secret revoked through the management API;
keys rotated and revoked in the console and the API; then every audit export the platform offers
(console CSV, JSON Lines and PDF; `manage.py export_audit` CSV, JSON Lines, PDF and checkpoints).

What is scanned:
1. the database: `pg_dump` of the test database as SQL text on PostgreSQL, `iterdump()` of the
   connection on SQLite: every table, every column;
2. the logs of the whole workflow at the production level (INFO; DEBUG for the platform's own
   loggers), three ways: as the JSON formatter writes them, as the text formatter writes them, and
   each record's raw message and traceback before any formatter could mask it (what any other
   handler, an error tracker say, would receive);
3. every export file, the PDFs both as bytes and as extracted text.

Each is searched for every secret value the workflow saw (API keys, relay tokens, `ek_` values,
the tenant's OpenAI key, the platform's own upstream key), and by shape for anything that looks
like one (`rtp_sk_…`, `rtp_rt_…`, `sk-…`, `ek_…`, bearer credentials): 0 hits. The public lookup
prefixes (`rtp_sk_` + 8 characters) are kept by design and must be present (the scan reads real
content).

Seen to fail on purpose:
- logging a key: add `logger.info("key created %s", issued.plaintext)` after the "console key
  created" log line of `key_create` in tenants/console_views.py: the test fails with
  "raw log messages: known secret #3 (rtp_sk_…) found" and "raw log messages: API key shape:
  ['rtp_sk_…']" (the JSON and text formatters mask it; a handler without them would write it);
- a token at rest: in `_mint_relay` (tokens/services.py) store `request_id=generated.plaintext`
  on the new ClientSecret: on PostgreSQL the test fails with "database dump: known secret #5
  (rtp_rt_…) found", "… #7 …" and "database dump: relay token shape: ['rtp_rt_…', 'rtp_rt_…']".
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from pypdf import PdfReader
from websockets.sync.client import connect

from audit.services import audit_checkpoint_heads
from conftest import make_key
from realtime_platform.logging import RedactingJsonFormatter, RedactingTextFormatter, RequestIdFilter
from relay.tests.test_sdk_e2e import ended, read_until_closed
from tenants.models import ApiKey, Scope
from tokens.tests.conftest import set_policy
from upstream.tests.support import speech

pytestmark = pytest.mark.django_db(transaction=True)

# Shapes of the secrets the platform handles; each excludes its masked form (`…[REDACTED]`) and
# must start at a word boundary, so "task-…" or "disk-…" are not OpenAI keys.
SHAPES = {
    "API key": re.compile(r"\brtp_sk_[0-9A-Za-z]{16,}"),
    "relay token": re.compile(r"\brtp_rt_[0-9A-Za-z]{16,}"),
    "OpenAI key": re.compile(r"(?<![0-9A-Za-z_-])sk-(?!\[REDACTED\])[0-9A-Za-z_-]{20,}"),
    "ephemeral client secret": re.compile(r"\bek_(?!\[REDACTED\])[0-9A-Za-z_-]{12,}"),
    "bearer credential": re.compile(r"(?i)\bbearer\s+(?!\[REDACTED\])(?:rtp_|sk-|ek_)\S+"),
}
PLATFORM_LOGGERS = ["realtime_platform", "tenants", "tokens", "usage", "audit", "relay", "upstream"]
SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
CHUNK = 960  # 20 ms of 24 kHz PCM16


class RawRecords(logging.Handler):
    """Every record's message and traceback, before any formatter (and its masking) saw it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name} {text} {record.__dict__.get('extra', '')}")


@contextmanager
def captured_logs() -> Iterator[dict[str, Any]]:
    """The project's own JSON and text formatters writing into buffers, plus the raw records."""
    buffers = {"json": StringIO(), "text": StringIO()}
    handlers: list[logging.Handler] = []
    for name, formatter in (
        ("json", RedactingJsonFormatter()),
        ("text", RedactingTextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")),
    ):
        handler = logging.StreamHandler(buffers[name])
        handler.setFormatter(formatter)
        handler.addFilter(RequestIdFilter())
        handlers.append(handler)
    raw = RawRecords()
    handlers.append(raw)
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ["", *PLATFORM_LOGGERS]}
    root.setLevel(logging.INFO)
    for name in PLATFORM_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for handler in handlers:
        root.addHandler(handler)
    result: dict[str, Any] = {"raw": raw}
    try:
        yield result
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        result["json log"] = buffers["json"].getvalue()
        result["text log"] = buffers["text"].getvalue()
        result["raw log messages"] = "\n".join(raw.lines)


def database_dump() -> str:
    """Every table, every column: pg_dump as SQL text, or SQLite's iterdump."""
    if connection.vendor == "postgresql":
        params = connection.get_connection_params()
        command = ["pg_dump", "--no-owner", "-h", params.get("host") or "127.0.0.1"]
        command += ["-p", str(params.get("port") or 5432), "-U", params.get("user") or "postgres"]
        return subprocess.run(
            [*command, connection.settings_dict["NAME"]],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    connection.ensure_connection()
    raw = connection.connection
    assert isinstance(raw, sqlite3.Connection)
    return "\n".join(raw.iterdump())


def console_url(tenant: Any, name: str, *args: Any) -> str:
    return reverse(f"console:{name}", args=[tenant.slug, *args])


def console_once(client: Client, tenant: Any) -> str:
    return client.get(console_url(tenant, "keys")).context["once"]


def issue(server: Any, key: str) -> dict[str, Any]:
    response = httpx.post(
        f"{server.http_url}/v1/realtime/client_secrets",
        json={"expires_after": {"anchor": "created_at", "seconds": 120}, "session": SESSION},
        headers={"Authorization": f"Bearer {key}", "X-Request-Id": f"scan-{key[-6:]}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    return response.json()


def relay_session(server: Any, token: str) -> int:
    """A spoken turn through /v1/realtime with the relay token; returns the audio bytes received."""
    with connect(
        f"{server.ws_url}/v1/realtime?model=gpt-realtime",
        additional_headers={"Authorization": f"Bearer {token}"},
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            )
        )
        audio = speech(400)
        for i in range(0, len(audio), CHUNK):
            chunk = base64.b64encode(audio[i : i + CHUNK]).decode()
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        ws.send(json.dumps({"type": "response.create"}))
        received = 0
        while True:
            event = json.loads(ws.recv(timeout=10))
            if event["type"] == "response.output_audio.delta":
                received += len(base64.b64decode(event["delta"]))
            if event["type"] == "response.done":
                break
        ws.close()
        read_until_closed(ws)
    return received


def audit_exports(owner: Any, tenant: Any, tmp_path: Any) -> dict[str, str]:
    """Every audit export the platform offers, as text (PDFs: raw bytes and extracted text)."""
    files: dict[str, str] = {}
    client = Client()
    client.force_login(owner)
    for fmt in ("csv", "jsonl", "pdf"):
        response = client.post(console_url(tenant, "audit-export"), {"format": fmt})
        assert response.status_code == 200
        body = b"".join(response.streaming_content) if response.streaming else response.content
        files[f"console export.{fmt}"] = pdf_text(body) if fmt == "pdf" else body.decode()
    for fmt in ("csv", "jsonl", "pdf"):
        target = tmp_path / f"export_audit.{fmt}"
        call_command("export_audit", tenant.slug, "--format", fmt, "-o", str(target), "--no-progress")
        files[f"export_audit.{fmt}"] = pdf_text(target.read_bytes()) if fmt == "pdf" else target.read_text()
    target = tmp_path / "checkpoints.jsonl"
    call_command("export_audit", tenant.slug, "--checkpoints", "-o", str(target), "--no-progress")
    files["export_audit --checkpoints"] = target.read_text()
    return files


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF")
    pages = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    return pages + "\n" + pdf.decode("latin-1")


def hits(name: str, text: str, known: list[str]) -> list[str]:
    found = [
        f"{name}: known secret #{i} ({value[:7]}…) found" for i, value in enumerate(known) if value in text
    ]
    for shape, pattern in SHAPES.items():
        matches = pattern.findall(text)
        if matches:
            found.append(f"{name}: {shape} shape: {sorted(set(matches))[:3]}")
    return found


def test_no_secret_is_at_rest_in_the_database_logs_or_exports(
    live_server_asgi, emulator, tenant, owner, tmp_path, settings
):
    known: list[str] = [settings.UPSTREAM_EMULATOR_API_KEY]
    console = Client()
    console.force_login(owner)
    with captured_logs() as logs:
        # API keys: the service layer, the management command, the console
        service_key = make_key(tenant, name="backend")
        out = StringIO()
        call_command("create_api_key", tenant.slug, "--name", "ci", stdout=out, stderr=StringIO())
        command_key = out.getvalue().strip().splitlines()[-1]
        created = console.post(
            console_url(tenant, "key-create"),
            {"once": console_once(console, tenant), "name": "ios", "scopes": [s.value for s in Scope]},
        )
        assert created.status_code == 200
        console_key = created.context["issued"].plaintext
        known += [service_key.plaintext, command_key, console_key]

        # the tenant's own OpenAI key, saved in the console (the emulator accepts it)
        tenant_openai_key = "sk-proj-" + "T3nantOwnKey" * 4
        emulator.add_api_key(tenant_openai_key)
        known.append(tenant_openai_key)
        saved = console.post(
            console_url(tenant, "quotas-upstream"), {"upstream_mode": "own", "secret": tenant_openai_key}
        )
        assert saved.status_code == 302, saved.content

        # client secrets of both kinds, over HTTP through the issuance fast path
        relay = issue(live_server_asgi, console_key)
        assert relay["value"].startswith("rtp_rt_")
        set_policy(tenant, secret_kind="upstream")
        upstream = issue(live_server_asgi, service_key.plaintext)
        assert upstream["value"].startswith("ek_")
        set_policy(tenant, secret_kind="relay")
        spare = issue(live_server_asgi, command_key)
        known += [relay["value"], upstream["value"], spare["value"]]
        known += [minted.value for minted in emulator.secrets]  # every ek_ the emulator minted

        # a relay session with the relay token: audio in, a spoken answer out
        assert relay_session(live_server_asgi, relay["value"]) > 0
        assert ended(tenant).end_reason

        # revoke a secret through the management API, rotate and revoke keys (console, API)
        api = httpx.Client(base_url=live_server_asgi.http_url, timeout=20)
        bearer = {"Authorization": f"Bearer {console_key}"}
        revoked = api.post(f"/api/v1/client_secrets/{spare['session']['id']}/revoke", headers=bearer)
        assert revoked.status_code == 200, revoked.text
        rotated = console.post(
            console_url(tenant, "key-rotate", service_key.api_key.pk),
            {"once": console_once(console, tenant), "grace_seconds": "3600"},
        )
        assert rotated.status_code == 200
        known.append(rotated.context["issued"].plaintext)
        command_key_id = ApiKey.objects.get(tenant=tenant, name="ci").pk
        assert api.post(f"/api/v1/api_keys/{command_key_id}/revoke", headers=bearer).status_code == 200
        assert console.post(console_url(tenant, "key-revoke", service_key.api_key.pk)).status_code == 302
        api.close()

        audit_checkpoint_heads()  # signed checkpoints, for the checkpoint export
        exports = audit_exports(owner, tenant, tmp_path)

    places = {"database dump": database_dump(), **{k: logs[k] for k in ("json log", "text log")}}
    places["raw log messages"] = logs["raw log messages"]
    places.update({f"export {name}": text for name, text in exports.items()})

    # the scan reads real content: what was done is there, with the public prefixes kept
    assert "secret.issued" in places["database dump"]
    assert "session." in places["database dump"]
    assert service_key.api_key.prefix in places["database dump"]
    assert "console key created" in places["json log"]
    assert "console key created" in places["raw log messages"]
    empty = [name for name, text in exports.items() if "key" not in text or tenant.slug not in text]
    empty.remove("export_audit --checkpoints")  # hashes and signatures of the tenant's chain:
    assert '"signature"' in exports["export_audit --checkpoints"]
    assert not empty, empty
    known = list(dict.fromkeys(known))  # the upstream secret's ek_ is also among the emulator's
    assert len(known) == 9  # 4 API keys, 2 relay tokens, 1 ek_, 2 OpenAI keys (platform, tenant)

    problems = [problem for name, text in places.items() for problem in hits(name, text, known)]
    assert not problems, "\n".join(problems)
