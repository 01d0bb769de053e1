"""Client-secret issuance: through the platform vs straight to the OpenAI emulator, in one run.

    python -m bench issuance         (or: make bench)

Needs PostgreSQL and Redis: DATABASE_URL / REDIS_URL, by default a local `rtp_bench_issuance`
database (created if missing) and Redis database 14. Starts, in separate processes, the OpenAI
emulator (`manage.py run_emulator`) and the platform (daphne, as `make run` serves it), drives
both with a raw keep-alive HTTP client (bench/loadgen.py) and prints:

- sequential p50 latency, direct vs through the platform (upstream kind), and the added ms;
- at 32 concurrent clients: throughput ratio platform/direct and p99 of each, and the added ms;
- the issuance path alone (relay kind, no upstream call): requests/s, and requests per second
  of the platform process's CPU time ("per core": one daphne process uses at most one core
  for Python);
- the same relay path through Django's ordinary ASGI handler (RTP_ISSUANCE_FAST_PATH=false),
  the design the fast path replaced.

Targets (issue 4): sequential p50 overhead <= 3 ms; p99 overhead <= 10 ms at 32 clients;
issuance path alone >= 800 requests/s per core.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import loadgen

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
EMULATOR_KEY = "sk-bench-emulator-key-0123456789abcdef"
SEQUENTIAL = int(os.environ.get("BENCH_SEQUENTIAL", "400"))
CONCURRENT_TOTAL = int(os.environ.get("BENCH_CONCURRENT_TOTAL", "2000"))
CLIENTS = 32
BODY = json.dumps(
    {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."},
    }
).encode()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rtp_bench_issuance")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    env.update(
        {
            "RTP_READ_DOTENV": "false",
            "DJANGO_SECRET_KEY": env.get("DJANGO_SECRET_KEY", "bench-only-secret-key-0123456789abcdefghij"),
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_ALLOWED_HOSTS": HOST,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


@contextmanager
def _server(argv: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seed(env: dict[str, str]) -> dict[str, str]:
    """Migrate, and make two unlimited tenants (relay and upstream kind) with a key each."""
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "realtime_platform.settings"
    import django

    django.setup()
    from django.core.management import call_command

    from audit.actors import Actor
    from tenants.models import Plan, Tenant
    from tenants.services import api_key_create, session_policy_update, tenant_create

    call_command("migrate", verbosity=0)
    actor = Actor.system("bench")
    plan, _ = Plan.objects.update_or_create(
        slug="bench-unlimited",
        defaults={
            "name": "Bench",
            "secrets_per_day": None,
            "requests_per_minute": None,
            "secret_ttl_max_seconds": 7200,
        },
    )
    keys = {}
    for kind in ("relay", "upstream"):
        slug = f"bench-{kind}"
        tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug, actor=actor, plan=plan)
        session_policy_update(
            tenant=tenant, actor=actor, values={"secret_kind": kind, "ttl_max_seconds": 7200}
        )
        keys[kind] = api_key_create(tenant=tenant, name=f"bench {time.time()}", actor=actor).plaintext
    from django.db import connections

    connections.close_all()
    return keys


def _measure(
    port: int, key: str, *, total: int, clients: int, pid: int | None = None
) -> tuple[loadgen.Result, float]:
    request = loadgen.build_request(
        HOST, port, "/v1/realtime/client_secrets", BODY, {"Authorization": f"Bearer {key}"}
    )
    asyncio.run(
        loadgen.run(HOST, port, lambda i: request, total=min(200, total), concurrency=clients)
    )  # warm
    cpu_before = _cpu_seconds(pid) if pid else 0.0
    result = asyncio.run(loadgen.run(HOST, port, lambda i: request, total=total, concurrency=clients))
    cpu = (_cpu_seconds(pid) - cpu_before) if pid else 0.0
    if set(result.statuses) != {200}:
        print(f"    statuses: {result.statuses}")
    return result, cpu


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def _emulator_available() -> bool:
    return (
        importlib.util.find_spec("upstream.emulator") is not None
        and (ROOT / "upstream/management/commands/run_emulator.py").exists()
    )


def _report(results: dict[str, tuple[loadgen.Result, float]], have_emulator: bool) -> None:
    print()
    print(f"{'run':16s} {'req/s':>8s} {'p50':>10s} {'p99':>10s} {'server CPU/req':>15s}")
    for name, (result, cpu) in results.items():
        per_request = f"{cpu / result.count * 1e6:9.0f} us" if cpu else ""
        p50, p99 = _ms(result.p50), _ms(result.percentile(99))
        print(f"{name:16s} {result.throughput:8.0f} {p50} {p99} {per_request:>15s}")
    print()
    relay, relay_cpu = results["relay 32"]
    per_core = relay.count / relay_cpu if relay_cpu else float("nan")
    print(
        f"issuance path alone (relay kind, {CLIENTS} clients): {relay.throughput:.0f} req/s, "
        f"{per_core:.0f} req/s per core (per second of platform CPU)   target >= 800"
    )
    django_run, django_cpu = results["django 32"]
    speedup = relay.throughput / django_run.throughput
    cpu_ratio = (django_cpu / django_run.count) / (relay_cpu / relay.count)
    print(
        f"fast path vs Django's ASGI handler (relay kind): throughput x{speedup:.1f}, "
        f"CPU/request x{cpu_ratio:.1f}"
    )
    if not have_emulator:
        print("upstream kind: skipped (the OpenAI emulator, upstream/emulator, is not in this tree)")
        return
    direct_seq, platform_seq = results["direct seq"][0], results["platform seq"][0]
    direct_32, platform_32 = results["direct 32"][0], results["platform 32"][0]
    added_p50 = (platform_seq.p50 - direct_seq.p50) * 1000
    ratio = platform_32.throughput / direct_32.throughput
    added_p99 = (platform_32.percentile(99) - direct_32.percentile(99)) * 1000
    print(
        f"sequential p50: platform {_ms(platform_seq.p50)}, direct {_ms(direct_seq.p50)}: "
        f"overhead {added_p50:.2f} ms   target <= 3 ms"
    )
    print(
        f"{CLIENTS} clients: throughput ratio platform/direct {ratio:.2f}; p99 platform "
        f"{_ms(platform_32.percentile(99))}, direct {_ms(direct_32.percentile(99))}: "
        f"overhead {added_p99:.2f} ms   target <= 10 ms"
    )


def main() -> int:
    env = _env()
    _ensure_database(env["DATABASE_URL"])
    keys = _seed(env)
    python = sys.executable
    print(
        f"database {env['DATABASE_URL'].rsplit('/', 1)[1]}, redis {env['REDIS_URL']}, {os.cpu_count()} cores"
    )
    print(
        f"sequential: {SEQUENTIAL} requests; concurrent: {CONCURRENT_TOTAL} requests over {CLIENTS} clients"
    )

    emulator_port = _free_port()
    platform_env = dict(env)
    emulator_argv = [
        python,
        "manage.py",
        "run_emulator",
        "--port",
        str(emulator_port),
        "--api-key",
        EMULATOR_KEY,
    ]
    have_emulator = _emulator_available()
    if have_emulator:
        platform_env.update(
            {"OPENAI_BASE_URL": f"http://{HOST}:{emulator_port}/v1", "OPENAI_API_KEY": EMULATOR_KEY}
        )

    results: dict[str, tuple[loadgen.Result, float]] = {}
    platform_port = _free_port()
    daphne = [
        python,
        "-m",
        "daphne",
        "-b",
        HOST,
        "-p",
        str(platform_port),
        "realtime_platform.asgi:application",
    ]
    with _server(daphne, platform_port, platform_env) as platform:
        results["relay seq"] = _measure(
            platform_port, keys["relay"], total=SEQUENTIAL, clients=1, pid=platform.pid
        )
        results["relay 32"] = _measure(
            platform_port, keys["relay"], total=CONCURRENT_TOTAL, clients=CLIENTS, pid=platform.pid
        )
        if have_emulator:
            with _server(emulator_argv, emulator_port, env):
                results["direct seq"] = _measure(emulator_port, EMULATOR_KEY, total=SEQUENTIAL, clients=1)
                results["platform seq"] = _measure(
                    platform_port, keys["upstream"], total=SEQUENTIAL, clients=1
                )
                results["direct 32"] = _measure(
                    emulator_port, EMULATOR_KEY, total=CONCURRENT_TOTAL, clients=CLIENTS
                )
                results["platform 32"] = _measure(
                    platform_port, keys["upstream"], total=CONCURRENT_TOTAL, clients=CLIENTS
                )

    # The design the fast path replaced: the DRF view under Django's ASGI handler. CONN_MAX_AGE=0,
    # because that handler opens a connection per request and would otherwise exhaust Postgres.
    slow_env = {**platform_env, "RTP_ISSUANCE_FAST_PATH": "false", "DATABASE_CONN_MAX_AGE": "0"}
    slow_port = _free_port()
    slow_daphne = [
        python,
        "-m",
        "daphne",
        "-b",
        HOST,
        "-p",
        str(slow_port),
        "realtime_platform.asgi:application",
    ]
    with _server(slow_daphne, slow_port, slow_env) as slow:
        results["django seq"] = _measure(
            slow_port, keys["relay"], total=SEQUENTIAL // 2, clients=1, pid=slow.pid
        )
        results["django 32"] = _measure(
            slow_port, keys["relay"], total=CONCURRENT_TOTAL // 4, clients=CLIENTS, pid=slow.pid
        )

    _report(results, have_emulator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
