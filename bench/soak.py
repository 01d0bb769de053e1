"""Load soak (issue 9, item 7): issuance and the relay at the benchmarks' load for minutes, on real
PostgreSQL and Redis, then an exact reconciliation of what the clients saw with what the platform
counted.

    make soak                       (SOAK_SECONDS=180 by default)
    SOAK_SECONDS=20 make soak       (a quick look)

Processes, all on 127.0.0.1: the OpenAI emulator (uvicorn, as in bench/relay.py), the platform
(`manage.py serve --server uvicorn --no-worker`, the production server, on DATABASE_URL and
REDIS_URL; `make soak` points them at the `rtp_soak` database, created if missing, and Redis DB 12)
and this load generator. A fresh tenant per run, on a plan with no limits, so nothing earlier counts.

Load (defaults are the benchmarks' target load; README "Issuance benchmark", "Relay benchmark"):
- issuance: SOAK_ISSUANCE_CLIENTS=32 keep-alive clients (the issuance benchmark's concurrency)
  posting /v1/realtime/client_secrets, relay kind, SOAK_ISSUANCE_RATE=40 a second in all (half
  what the benchmark measured the platform to carry here, 81/s, so the relay keeps its share of
  the CPU; 0: back to back, as fast as answered) (bench/loadgen.py);
- relay: SOAK_SESSIONS=100 concurrent sessions, each streaming real-time 24 kHz PCM16 audio in 20 ms
  appends for SOAK_SESSION_SECONDS=10, then commit + response.create, reading the answer to its
  `response.done`, closing with 1000 and starting over (a new session) until the time is up
  (the relay benchmark's target count: 100 sessions in real time).

Fails (exit 1) on any violation:
- errors: any issuance status other than 200 and 429, any session that did not end as described
  (refused handshake, error event, unexpected close, timeout);
- memory: the platform process's RSS is sampled every SOAK_SAMPLE_SECONDS=3; after the warm-up
  (the first quarter of the run, at least one session cycle) it may not grow by more than
  max(SOAK_RSS_GROWTH_MIB=32 MiB, 15 % of the warm-up level). Printed: start, end of warm-up, end,
  max, and an ASCII chart;
- reconciliation, exactly: the tenant's daily client-secret counters (QuotaCounter, summed over the
  days the run spans), its `secret_issued` usage events, its ClientSecret rows and its
  `secret.issued` audit events all equal the issuance 200s; its RealtimeSession rows (all ended),
  `session_ended` usage events and `session.opened` / `session.ended` audit events equal the
  sessions the clients saw open (`session.created`; end reasons are printed); its `response`
  usage events equal the `response.done` events clients received; the concurrency counter is
  back to 0.

Seen to fail on purpose:
- a lost ledger row: in `_record_issued` (tokens/services.py) call `usage_record` only
  `if not secret.pk.endswith("A")`: `SOAK_SECONDS=20 SOAK_SESSIONS=20 make soak` ended with
  "FAIL reconciliation: usage events secret_issued 1,951 != issuance 200s 1,978", exit status 1;
- a leak: append every client frame to a module-level list in `RelaySession.from_client`
  (relay/core.py): `SOAK_SECONDS=40 SOAK_SESSIONS=60 make soak` ended with "FAIL memory: grew
  76.8 MiB after warm-up (allowed 32.0)" (a 24 s run grew only 29.6 MiB after its warm-up and
  passed: short runs need a fast leak to show one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.issuance import BODY, _ensure_database
from bench.relay import ROOT, SESSION_UPDATE, Process, django_env, free_port, start_emulator, wait_port

SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
ISSUANCE_CLIENTS = int(os.environ.get("SOAK_ISSUANCE_CLIENTS", "32"))
ISSUANCE_RATE = float(os.environ.get("SOAK_ISSUANCE_RATE", "40"))  # requests/s; 0: as fast as answered
SESSIONS = int(os.environ.get("SOAK_SESSIONS", "100"))
SESSION_SECONDS = float(os.environ.get("SOAK_SESSION_SECONDS", "10"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "3"))
RSS_GROWTH_MIB = float(os.environ.get("SOAK_RSS_GROWTH_MIB", "32"))
RSS_GROWTH_FRACTION = 0.15
CHUNK = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()})


def platform_env(var_dir: str, emulator_port: int) -> dict[str, str]:
    """bench/relay.py's environment (same secret key, so the same emulator key), on the real services."""
    env = django_env(var_dir, emulator_port)
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not os.environ.get(name):
            sys.exit(f"{name} is required (make soak sets it: rtp_soak on 127.0.0.1, Redis DB 12)")
        env[name] = os.environ[name]
    env["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    return env


def setup(env: dict[str, str]) -> tuple[Any, str]:
    """Migrate, then a fresh unlimited tenant and one key; returns (tenant, key plaintext)."""
    os.environ.update(env)
    os.environ.pop("OPENAI_BASE_URL", None)
    os.environ["DJANGO_SETTINGS_MODULE"] = "realtime_platform.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    from audit.actors import Actor
    from tenants.models import Plan
    from tenants.services import api_key_create, session_policy_update, tenant_create

    call_command("migrate", verbosity=0)
    actor = Actor.system("soak")
    plan, _ = Plan.objects.update_or_create(
        slug="soak-unlimited",
        defaults={
            "name": "Soak",
            "secrets_per_day": None,
            "requests_per_minute": None,
            "concurrent_sessions": None,
            "tokens_per_month": None,
            "cost_usd_per_month": None,
            "audio_minutes_per_month": None,
            "max_session_seconds": None,
            "secret_ttl_max_seconds": 7200,
        },
    )
    tenant = tenant_create(slug=f"soak-{int(time.time())}", actor=actor, plan=plan)
    session_policy_update(tenant=tenant, actor=actor, values={"secret_kind": "relay"})
    key = api_key_create(tenant=tenant, name="soak", actor=actor).plaintext
    connections.close_all()
    return tenant, key


def start_platform(env: dict[str, str], log: Path) -> Process:
    """The platform on uvicorn; its log (WARNING and up) goes to `log`, read for tracebacks."""
    import subprocess

    port = free_port()
    with open(log, "w") as stderr:
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--no-worker", "--server", "uvicorn", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    wait_port(port, popen)
    return Process(popen, port)


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (the server may fork)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


# --- the relay load ----------------------------------------------------------------------------


@dataclass
class Sessions:
    opened: int = 0  # session.created received: the platform has a session row
    completed: int = 0
    responses: int = 0
    failures: list[str] = field(default_factory=list)


async def session_loop(url: str, key: str, tally: Sessions, stop_at: float, index: int) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    await asyncio.sleep(index * SESSION_SECONDS / max(1, SESSIONS))  # spread the cycles out
    while loop.time() + SESSION_SECONDS < stop_at:
        try:
            async with asyncio.timeout(SESSION_SECONDS + 120):
                async with connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {key}"},
                    compression=None,
                    max_size=None,
                    open_timeout=60,  # a busy machine is slow to answer, not wrong
                ) as ws:
                    assert json.loads(await ws.recv())["type"] == "session.created"
                    tally.opened += 1
                    await ws.send(SESSION_UPDATE)
                    while json.loads(await ws.recv())["type"] != "session.updated":
                        pass
                    begin = loop.time()
                    for n in range(int(SESSION_SECONDS * 50)):
                        await asyncio.sleep(max(0.0, begin + n * 0.02 - loop.time()))
                        await ws.send(CHUNK)
                    await ws.send('{"type":"input_audio_buffer.commit"}')
                    await ws.send('{"type":"response.create"}')
                    while True:
                        event = json.loads(await ws.recv())
                        if event["type"] == "error":
                            raise RuntimeError(f"error event: {event['error']}")
                        if event["type"] == "response.done":
                            tally.responses += 1
                            break
                await ws.wait_closed()
                if ws.close_code != 1000:
                    raise RuntimeError(f"closed with {ws.close_code}")
            tally.completed += 1
        except Exception as exc:
            tally.failures.append(f"session {index}: {type(exc).__name__}: {exc}"[:300])


# --- memory -----------------------------------------------------------------------------------


async def sample_rss(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - start, tree_rss_kib(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
    samples.append((time.monotonic() - start, tree_rss_kib(pid)))


def chart(samples: list[tuple[float, int]], width: int = 60, height: int = 8) -> str:
    values = [kib / 1024 for _, kib in samples]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1.0)
    n = min(width, len(values))
    columns = [values[i * len(values) // n] for i in range(n)]
    rows = []
    for level in range(height, 0, -1):
        threshold = lo + span * (level - 0.5) / height
        label = f"{lo + span * level / height:7.1f} |" if level in (height, 1) else "        |"
        rows.append(label + "".join("#" if v >= threshold else " " for v in columns))
    rows.append(f"{'MiB':>8}+" + "-" * len(columns) + f"  0..{samples[-1][0]:.0f} s")
    return "\n".join(rows)


# --- reconciliation ---------------------------------------------------------------------------


def reconcile(tenant: Any, ok_200: int, sessions: Sessions) -> list[str]:
    from django.db.models import Count, Sum

    from audit.chain import chain_for
    from audit.models import AuditEvent
    from relay.models import RealtimeSession
    from tokens.models import ClientSecret
    from usage.models import Metric, QuotaCounter, UsageEvent

    def usage(kind: str) -> int:
        return UsageEvent.objects.filter(tenant=tenant, kind=kind).count()

    def audited(action: str) -> int:
        return AuditEvent.objects.filter(chain=chain_for(tenant.pk), action=action).count()

    counters = QuotaCounter.objects.filter(tenant=tenant, api_key__isnull=True)
    secrets_counted = counters.filter(metric=Metric.SECRETS).aggregate(n=Sum("used"))["n"] or 0
    rows = RealtimeSession.objects.filter(tenant=tenant)
    checks = {
        "daily client-secret counters": (secrets_counted, ok_200, "issuance 200s"),
        "usage events secret_issued": (usage(UsageEvent.Kind.SECRET_ISSUED), ok_200, "issuance 200s"),
        "client secret rows": (ClientSecret.objects.filter(tenant=tenant).count(), ok_200, "issuance 200s"),
        "audit secret.issued": (audited("secret.issued"), ok_200, "issuance 200s"),
        "session rows": (rows.count(), sessions.opened, "sessions opened"),
        "session rows ended": (
            rows.filter(status=RealtimeSession.Status.ENDED).count(),
            sessions.opened,
            "sessions opened",
        ),
        "usage events session_ended": (
            usage(UsageEvent.Kind.SESSION_ENDED),
            sessions.opened,
            "sessions opened",
        ),
        "audit session.opened": (audited("session.opened"), sessions.opened, "sessions opened"),
        "audit session.ended": (audited("session.ended"), sessions.opened, "sessions opened"),
        "usage events response": (usage(UsageEvent.Kind.RESPONSE), sessions.responses, "response.done seen"),
        "concurrency counter": (
            counters.filter(metric=Metric.SESSIONS).aggregate(n=Sum("used"))["n"] or 0,
            0,
            "open sessions",
        ),
    }
    reasons = dict(rows.values_list("end_reason").annotate(n=Count("id")).order_by())
    print(f"  end reasons of the sessions: {reasons}")
    problems = []
    for name, (counted, seen, what) in checks.items():
        mark = "ok  " if counted == seen else "FAIL"
        print(f"  {mark} {name:32s} {counted:>8,}   {what}: {seen:,}")
        if counted != seen:
            problems.append(f"reconciliation: {name} {counted:,} != {what} {seen:,}")
    return problems


def wait_sessions_ended(tenant: Any, timeout: float = 30) -> None:
    """The relay writes a session's end just after the socket closes; give it a moment."""
    from relay.models import RealtimeSession

    deadline = time.monotonic() + timeout
    while RealtimeSession.objects.filter(tenant=tenant).exclude(status=RealtimeSession.Status.ENDED).exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)


# --- the run ----------------------------------------------------------------------------------


async def drive(platform: Process, key: str) -> tuple[loadgen.Result, Sessions, list[tuple[float, int]]]:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + SECONDS
    request = loadgen.build_request(
        "127.0.0.1", platform.port, "/v1/realtime/client_secrets", BODY, {"Authorization": f"Bearer {key}"}
    )
    samples: list[tuple[float, int]] = []
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(platform.popen.pid, samples, stop_sampling))
    tally = Sessions()
    url = f"ws://127.0.0.1:{platform.port}/v1/realtime?model=gpt-realtime"
    relay = [asyncio.create_task(session_loop(url, key, tally, stop_at, i)) for i in range(SESSIONS)]
    issuance = await loadgen.run(
        "127.0.0.1",
        platform.port,
        lambda i: request,
        total=10**9,
        concurrency=ISSUANCE_CLIENTS,
        deadline=time.monotonic() + SECONDS,
        rate=ISSUANCE_RATE or None,
    )
    await asyncio.gather(*relay)
    stop_sampling.set()
    await sampler
    return issuance, tally, samples


def server_log_verdict(text: str) -> list[str]:
    """The platform logs JSON at WARNING and up: an ERROR (an unhandled exception, a 5xx) fails the
    soak; warnings (handled and retried, e.g. a Redis read timeout) are counted and shown."""
    levels: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = {"level": "ERROR" if "Traceback" in line else "OTHER", "message": line[:120]}
        if isinstance(record, dict) and "level" in record:
            by_message = levels.setdefault(str(record["level"]), {})
            by_message[str(record.get("message"))[:120]] = (
                by_message.get(str(record.get("message"))[:120], 0) + 1
            )
    for level, messages in sorted(levels.items()):
        for message, count in sorted(messages.items(), key=lambda item: -item[1])[:5]:
            print(f"platform log {level}: {count} x {message}")
    errors = sum(sum(levels.get(level, {}).values()) for level in ("ERROR", "CRITICAL"))
    return [f"the platform logged {errors} error(s): see var/soak-platform.log"] if errors else []


def memory_verdict(samples: list[tuple[float, int]]) -> list[str]:
    warmup_until = max(SECONDS / 4, min(SESSION_SECONDS + 5, SECONDS / 2))
    warm = [kib for t, kib in samples if t >= warmup_until] or [samples[-1][1]]
    base, end, peak = warm[0] / 1024, samples[-1][1] / 1024, max(kib for _, kib in samples) / 1024
    allowed = max(RSS_GROWTH_MIB, base * RSS_GROWTH_FRACTION)
    growth = max(warm) / 1024 - base
    print(
        f"platform RSS: start {samples[0][1] / 1024:.1f} MiB, after warm-up ({warmup_until:.0f} s) "
        f"{base:.1f} MiB, end {end:.1f} MiB, max {peak:.1f} MiB; growth after warm-up {growth:+.1f} MiB "
        f"(allowed {allowed:.1f} MiB), {len(samples)} samples"
    )
    print(chart(samples))
    return (
        [f"memory: grew {growth:.1f} MiB after warm-up (allowed {allowed:.1f})"] if growth > allowed else []
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rtp-soak-") as var_dir:
        emulator = start_emulator(var_dir, "uvicorn")
        env = platform_env(var_dir, emulator.port)
        _ensure_database(env["DATABASE_URL"])
        tenant, key = setup(env)
        log = Path(var_dir) / "platform.log"
        platform = start_platform(env, log)
        print(
            f"soak: {SECONDS:.0f} s on {env['DATABASE_URL'].rsplit('/', 1)[1]} + {env['REDIS_URL']}; "
            f"issuance {ISSUANCE_CLIENTS} clients; relay {SESSIONS} sessions x {SESSION_SECONDS:.0f} s of "
            f"audio + 1 response each; tenant {tenant.slug}; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.2f}",
            flush=True,
        )
        try:
            started = time.monotonic()
            issuance, sessions, samples = asyncio.run(drive(platform, key))
            elapsed = time.monotonic() - started
        finally:
            platform.stop()
            emulator.stop()
            server_log = log.read_text()
            kept = ROOT / "var" / "soak-platform.log"  # for a look after a failure
            kept.parent.mkdir(exist_ok=True)
            kept.write_text(server_log)
    ok_200 = issuance.statuses.get(200, 0)
    problems: list[str] = []
    print(
        f"issuance: {issuance.count:,} requests in {issuance.elapsed:.0f} s ({issuance.throughput:.0f}/s), "
        f"statuses {dict(sorted(issuance.statuses.items()))}, p50 {issuance.p50 * 1000:.1f} ms, "
        f"p99 {issuance.percentile(99) * 1000:.1f} ms"
    )
    errors = {status: n for status, n in issuance.statuses.items() if status not in (200, 429)}
    if errors:
        problems.append(f"issuance errors: {errors}")
    print(
        f"relay: {sessions.opened:,} sessions opened, {sessions.completed:,} completed "
        f"({sessions.responses:,} responses), "
        f"{len(sessions.failures)} failed; {elapsed:.0f} s in all"
    )
    for failure in sessions.failures[:10]:
        print(f"  {failure}")
    if sessions.failures:
        problems.append(f"relay errors: {len(sessions.failures)} sessions failed")
    problems += server_log_verdict(server_log)
    problems += memory_verdict(samples)
    wait_sessions_ended(tenant)
    print("reconciliation (counted by the platform vs seen by the clients):")
    problems += reconcile(tenant, ok_200, sessions)
    for problem in problems:
        print(f"FAIL {problem}")
    print("soak: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
