"""What the relay adds to a realtime session, on this machine, against the built-in OpenAI emulator.

Three processes share the machine, as the issue asks: the emulator (`manage.py run_emulator`), the
platform (`manage.py serve --server daphne|uvicorn`, the same consumer either way) and this load
generator. For each session count N, the same load runs twice or more:

- direct: N sessions straight to the emulator (the baseline, measured in the same run);
- relay/<server>: N sessions through the platform's /v1/realtime to the same emulator.

Each session streams real-time 24 kHz PCM16 audio in 20 ms `input_audio_buffer.append` events (50
a second; server VAD off, so upstream just buffers them) and, with every 10th chunk, a probe event
(`conversation.item.retrieve` of an unknown item) that upstream answers at once with an `error`
carrying the probe's event id. The probe's round trip is the latency measured: two relay hops
(client → upstream, upstream → client) when relayed. "Added" is relay minus direct, at p50 and p99.
A run keeps real time when 99% of chunks leave within 20 ms of their schedule and every probe is
answered.

Also measured: the relay process's CPU per relayed event, and its resident memory per idle session.

Run: `python -m bench relay` (defaults) or
`python -m bench.relay --sessions 50,100,150,200 --seconds 8 --servers daphne,uvicorn`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHUNK = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()})
PROBE_EVERY = 10  # chunks: 5 probes a second per session
SESSION_UPDATE = json.dumps(
    {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def django_env(var_dir: str, emulator_port: int | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "RTP_READ_DOTENV": "false",
        "DJANGO_SECRET_KEY": "bench-only-secret-key-0123456789-0123456789-0123456789",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_LOG_LEVEL": "WARNING",
        "RTP_VAR_DIR": var_dir,
        "OPENAI_API_KEY": "",
    }
    env.pop("DATABASE_URL", None)  # a private SQLite file: the benchmark never touches your data
    env.pop("REDIS_URL", None)
    if emulator_port is not None:
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{emulator_port}/v1"
    return env


SETUP = """
from audit.actors import Actor
from tenants.models import Plan
from tenants.services import api_key_create, tenant_create
from django.conf import settings
tenant = tenant_create(slug="bench", actor=Actor.system("bench"))
Plan.objects.filter(pk=tenant.plan_id).update(concurrent_sessions=100000, tokens_per_month=None,
    cost_usd_per_month=None, audio_minutes_per_month=None, max_session_seconds=None)
key = api_key_create(tenant=tenant, name="bench", scopes=["realtime:connect"], actor=Actor.system("bench"))
print(key.plaintext)
print(settings.UPSTREAM_EMULATOR_API_KEY)
"""


def setup(var_dir: str) -> tuple[str, str]:
    """A fresh database with one tenant and key; returns (relay key, emulator key)."""
    env = django_env(var_dir)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SETUP],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[-2], out[-1]


@dataclass
class Process:
    popen: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def wait_port(port: int, popen: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"server exited with {popen.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


EMULATOR_ON_UVICORN = """
import django, uvicorn
django.setup()
from django.conf import settings
from upstream.emulator import Emulator
uvicorn.run(Emulator(api_keys={settings.UPSTREAM_EMULATOR_API_KEY}), host="127.0.0.1", port=PORT,
            lifespan="off", ws_per_message_deflate=False, ws_max_size=32 * 1024 * 1024, log_level="warning")
"""


def start_emulator(var_dir: str, server: str) -> Process:
    """The emulator alone in its own process: under daphne (`manage.py run_emulator`) or uvicorn."""
    port = free_port()
    if server == "daphne":
        command = [sys.executable, "manage.py", "run_emulator", "--port", str(port)]
    else:
        command = [sys.executable, "-c", EMULATOR_ON_UVICORN.replace("PORT", str(port))]
    env = {**django_env(var_dir), "DJANGO_SETTINGS_MODULE": "realtime_platform.settings"}
    popen = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    wait_port(port, popen)
    return Process(popen, port)


def start_relay(var_dir: str, server: str, emulator_port: int) -> Process:
    port = free_port()
    popen = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--no-worker", "--server", server, "--port", str(port)],
        cwd=ROOT,
        env=django_env(var_dir, emulator_port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    wait_port(port, popen)
    return Process(popen, port)


# --- the load generator -----------------------------------------------------------------------


@dataclass
class Tally:
    rtts: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    probes_sent: int = 0
    events_sent: int = 0
    events_received: int = 0
    failures: int = 0
    measuring: bool = False


async def one_session(url: str, key: str, tally: Tally, start_at: float, stop_at: float, index: int) -> None:
    from websockets.asyncio.client import connect

    pending: dict[str, tuple[float, bool]] = {}  # probe id -> (sent at, sent while measuring)
    try:
        async with connect(
            url,
            additional_headers={"Authorization": f"Bearer {key}"},
            compression=None,
            max_size=None,
            open_timeout=60,
        ) as ws:
            await ws.recv()  # session.created
            await ws.send(SESSION_UPDATE)
            while json.loads(await ws.recv())["type"] != "session.updated":
                pass

            async def read() -> None:
                async for message in ws:
                    tally.events_received += 1
                    if '"error"' in message:
                        probe = json.loads(message)["error"].get("event_id")
                        sent = pending.pop(probe, None)
                        if sent is not None and sent[1]:
                            tally.rtts.append(time.perf_counter() - sent[0])

            reader = asyncio.create_task(read())
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, start_at - loop.time()) + (index % 50) * 0.0004)  # spread the phases
            begin, n = time.perf_counter(), 0
            while loop.time() < stop_at:
                due = begin + n * 0.02
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                elif tally.measuring:
                    tally.late.append(now - due)
                await ws.send(CHUNK)
                tally.events_sent += 1
                if n % PROBE_EVERY == 0:
                    probe = f"probe_{index}_{n}"
                    pending[probe] = (time.perf_counter(), tally.measuring)
                    await ws.send(
                        json.dumps(
                            {"type": "conversation.item.retrieve", "item_id": "item_none", "event_id": probe}
                        )
                    )
                    tally.events_sent += 1
                    if tally.measuring:
                        tally.probes_sent += 1
                if n % 250 == 249:  # keep upstream's buffer small: a clear every 5 s
                    await ws.send('{"type":"input_audio_buffer.clear"}')
                n += 1
            await asyncio.sleep(0.5)
            reader.cancel()
    except Exception:
        tally.failures += 1


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(url: str, key: str, sessions: int, seconds: float, warmup: float = 2.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tally = Tally()
    start_at = loop.time() + 1.0 + sessions * 0.01  # connect everyone first
    stop_at = start_at + warmup + seconds
    tasks = [asyncio.create_task(one_session(url, key, tally, start_at, stop_at, i)) for i in range(sessions)]
    await asyncio.sleep(max(0.0, start_at + warmup - loop.time()))
    tally.measuring = True
    await asyncio.sleep(max(0.0, stop_at - loop.time()))
    tally.measuring = False
    await asyncio.gather(*tasks)
    answered = len(tally.rtts)
    return {
        "p50_ms": quantile(tally.rtts, 0.5) * 1000,
        "p99_ms": quantile(tally.rtts, 0.99) * 1000,
        "late_p99_ms": quantile(tally.late, 0.99) * 1000 if tally.late else 0.0,
        "probes": tally.probes_sent,
        "answered": answered,
        "failures": tally.failures,
        "events": tally.events_sent + tally.events_received,
        "real_time": tally.failures == 0
        and answered >= tally.probes_sent * 0.999
        and (not tally.late or quantile(tally.late, 0.99) < 0.02),
    }


async def idle_memory(relay: Process, url: str, key: str, count: int) -> float:
    """Resident memory of the relay process per open, idle session (KiB)."""
    from websockets.asyncio.client import connect

    before = relay.rss_kib()
    stack = contextlib.AsyncExitStack()
    async with stack:
        for _ in range(count):
            ws = await stack.enter_async_context(
                connect(url, additional_headers={"Authorization": f"Bearer {key}"}, compression=None)
            )
            await ws.recv()
        await asyncio.sleep(1.0)
        after = relay.rss_kib()
    return (after - before) / count


def fmt(row: dict[str, Any]) -> str:
    return (
        f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
        f"  chunk lateness p99 {row['late_p99_ms']:6.2f} ms"
        f"  probes {row['answered']}/{row['probes']}  failures {row['failures']}"
        f"  {'real time' if row['real_time'] else 'FELL BEHIND'}"
    )


async def core_cost(events: int = 20000) -> tuple[float, float]:
    """CPU of the relay's own logic per event (µs), without sockets: a RelaySession between a
    client and an upstream that only count what they get."""
    from relay.core import RelaySession, SessionPlan

    class Upstream:
        def __init__(self) -> None:
            self.frames: asyncio.Queue[str] = asyncio.Queue()
            self.frames.put_nowait(
                '{"type":"session.created","event_id":"event_1","session":{"id":"sess_1"}}'
            )

        async def send(self, frame: str | bytes) -> None:
            return None

        async def recv(self) -> str:
            return await self.frames.get()

        async def close(self, code: int = 1000, reason: str = "") -> None:
            return None

    upstream = Upstream()

    class Connector:
        async def connect(self, **kwargs: Any) -> Upstream:
            return upstream

    class Client:
        sent = 0

        async def send(self, frame: str) -> None:
            Client.sent += 1

        async def close(self, code: int, reason: str) -> None:
            return None

    class Hooks:
        async def response_done(self, **kwargs: Any) -> None:
            return None

        async def heartbeat(self, stats: Any) -> None:
            return None

        async def ended(self, stats: Any, **kwargs: Any) -> None:
            return None

    session = RelaySession(
        plan=SessionPlan(session_id="rs_bench", model="gpt-realtime"),
        client=Client(),
        connector=Connector(),
        hooks=Hooks(),
    )
    await session.open_upstream()
    await session.start()
    started = time.process_time()
    for _ in range(events):
        await session.from_client(CHUNK)
    client_side = (time.process_time() - started) * 1e6 / events
    delta = json.dumps(
        {
            "type": "response.output_audio.delta",
            "event_id": "event_2",
            "response_id": "resp_1",
            "item_id": "item_1",
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(bytes(4800)).decode(),
        }
    )
    before, started = Client.sent, time.process_time()
    for _ in range(events):
        upstream.frames.put_nowait(delta)
    while Client.sent - before < events:
        await asyncio.sleep(0)
    upstream_side = (time.process_time() - started) * 1e6 / events
    await session.client_closed(1000)
    return client_side, upstream_side


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measured(
    name: str, url: str, key: str, n: int, seconds: float, processes: dict[str, Process]
) -> dict[str, Any]:
    """One load run, with the CPU share each process took during it (100% = one core)."""
    before = {label: p.cpu_seconds() for label, p in processes.items()}
    own, wall = own_cpu_seconds(), time.monotonic()
    row = await run_load(url, key, n, seconds)
    wall = time.monotonic() - wall
    row["cpu"] = {label: (p.cpu_seconds() - before[label]) / wall * 100 for label, p in processes.items()}
    row["cpu"]["load generator"] = (own_cpu_seconds() - own) / wall * 100
    if "relay" in processes:
        row["relay_us_per_event"] = row["cpu"]["relay"] / 100 * wall * 1e6 / max(1, row["events"])
    return row


def cpu_line(row: dict[str, Any]) -> str:
    return "CPU " + ", ".join(f"{label} {share:.0f}%" for label, share in row["cpu"].items())


async def main_async(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.sessions.split(",")]
    servers = args.servers.split(",")
    print(
        f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())};"
        f" emulator on {args.emulator}"
    )
    with tempfile.TemporaryDirectory(prefix="rtp-bench-relay-") as var_dir:
        relay_key, emulator_key = setup(var_dir)
        emulator = start_emulator(var_dir, args.emulator)
        relays = {name: start_relay(var_dir, name, emulator.port) for name in servers}
        direct_url = f"ws://127.0.0.1:{emulator.port}/v1/realtime?model=gpt-realtime"
        results: dict[tuple[str, int], dict[str, Any]] = {}
        try:
            client_side, upstream_side = await core_cost()
            print("\n== the relay's own logic, without sockets (relay/core.py)")
            print(
                f"  {client_side:.1f} us of CPU per 20 ms client append (checked, counted, forwarded as is),"
                f" {upstream_side:.1f} us per upstream audio delta"
            )
            print("\n== memory per idle relayed session (fresh server processes)")
            for name, relay in relays.items():
                kib = await idle_memory(
                    relay, f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime", relay_key, args.idle
                )
                print(f"  relay/{name:8}  {kib:.1f} KiB per session ({args.idle} idle sessions)", flush=True)
            for n in counts:
                print(
                    f"\n== {n} sessions, {args.seconds:.0f} s:"
                    f" 20 ms chunks (50/s) + {50 // PROBE_EVERY} probes/s each",
                    flush=True,
                )
                direct = await measured(
                    "direct", direct_url, emulator_key, n, args.seconds, {"emulator": emulator}
                )
                results[("direct", n)] = direct
                print(f"  direct          {fmt(direct)}", flush=True)
                print(f"  {'':15} {cpu_line(direct)}", flush=True)
                for name, relay in relays.items():
                    row = await measured(
                        name,
                        f"ws://127.0.0.1:{relay.port}/v1/realtime?model=gpt-realtime",
                        relay_key,
                        n,
                        args.seconds,
                        {"relay": relay, "emulator": emulator},
                    )
                    row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
                    row["added_p99_ms"] = row["p99_ms"] - direct["p99_ms"]
                    results[(name, n)] = row
                    print(f"  relay/{name:8}  {fmt(row)}", flush=True)
                    print(
                        f"  {'':15} added p50 {row['added_p50_ms']:+.2f} ms,"
                        f" p99 {row['added_p99_ms']:+.2f} ms;"
                        f" ratio to direct p50 x{row['p50_ms'] / direct['p50_ms']:.2f},"
                        f" p99 x{row['p99_ms'] / direct['p99_ms']:.2f}; {cpu_line(row)};"
                        f" relay {row['relay_us_per_event']:.0f} us of CPU per event",
                        flush=True,
                    )
        finally:
            for relay in relays.values():
                relay.stop()
            emulator.stop()
        print(
            "\n== summary (targets: p50 added <= 1 ms, p99 added <= 10 ms at 100 sessions;"
            " largest count keeping real time with p99 added <= 25 ms >= 150)"
        )
        for name in servers:
            ok = [
                n
                for n in counts
                if results[(name, n)]["real_time"]
                and results[("direct", n)]["real_time"]
                and results[(name, n)]["added_p99_ms"] <= 25
            ]
            print(
                f"  relay/{name:8}  largest session count in real time with p99 added <= 25 ms: "
                f"{max(ok) if ok else 'none of ' + args.sessions}"
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="50,100,150,200", help="comma-separated session counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("--idle", type=int, default=200, help="idle sessions for the memory figure")
    parser.add_argument(
        "--emulator",
        default="uvicorn",
        choices=["uvicorn", "daphne"],
        help="server of the emulator process (the upstream of every run)",
    )
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(main_async(args))
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
