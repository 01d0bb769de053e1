"""The OpenAI emulator's own capacity on this machine, so later benchmarks can report the platform's
overhead as a ratio against it.

Two servers, each daphne in its own process (the emulator runs on daphne wherever it runs):
- `emulator`: the built-in emulator (`upstream.emulator.Emulator`);
- `bare`: a do-nothing ASGI app on the same daphne that answers REST with a canned client-secret
  body and, after each spoken turn's worth of appends, pushes the exact frames the emulator sent
  for one turn (recorded in-process at start-up), so the socket work is identical minus the
  emulator's logic (VAD, validation, response generation).

The load generator (this process) runs the same client against both:
- REST: N concurrent clients POST /v1/realtime/client_secrets for a few seconds (req/s, p50, p99);
- WebSocket: M concurrent sessions, each repeating a spoken turn (1 s of speech + 0.3 s of silence
  in 20 ms appends, then reading every server event up to `rate_limits.updated`): server events/s,
  turns/s and seconds of input audio handled per second.

Run: `python -m bench emulator` (or `python -m bench.emulator --seconds 5 --http 16 --sockets 8`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from array import array
from typing import Any

KEY = "sk-bench-emulator-key-0000000000"
CHUNK_MS = 20
BODY = {"session": {"type": "realtime", "model": "gpt-realtime", "instructions": "You are a benchmark."}}


def turn_appends() -> list[str]:
    """One spoken turn as the client sends it: 20 ms appends of a loud tone, then silence."""
    rate = 24000
    samples = array("h", [int(9000 * math.sin(2 * math.pi * 300 * i / rate)) for i in range(rate)])
    audio = samples.tobytes() + bytes(2 * rate * 300 // 1000)
    step = 2 * rate * CHUNK_MS // 1000
    return [
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i : i + step]).decode()}
        )
        for i in range(0, len(audio), step)
    ]


# --- servers (run in child processes) ---------------------------------------------------------


async def record_one_turn() -> tuple[str, list[str]]:
    """The frames the emulator sends for session start and for one spoken turn."""
    from upstream.emulator import EmulatorConfig
    from upstream.emulator.schema import default_session
    from upstream.emulator.session import RealtimeSessionEmulator
    from upstream.emulator.state import EmulatorState

    frames: list[str] = []

    async def send(text: str) -> None:
        frames.append(text)

    async def close(code: int, reason: str) -> None:
        return None

    session = RealtimeSessionEmulator(
        state=EmulatorState(api_keys={KEY}, config=EmulatorConfig()),
        kind="realtime",
        config=default_session("realtime", voice="marin"),
        send=send,
        close=close,
    )
    await session.start()
    for frame in turn_appends():
        await session.handle_text(frame)
    while not frames or '"type":"rate_limits.updated"' not in frames[-1]:
        await asyncio.sleep(0.001)
    session.stop()
    return frames[0], frames[1:]


def bare_app(canned_secret: bytes, created: str, turn: list[str], appends_per_turn: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            while (await receive()).get("more_body"):
                pass
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(canned_secret)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": canned_secret})
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": created})
            received = 0
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                received += 1
                if received % appends_per_turn == 0:
                    for frame in turn:
                        await send({"type": "websocket.send", "text": frame})

    return app


def serve(kind: str) -> None:
    from daphne.server import Server

    from upstream.emulator import Emulator

    if kind == "emulator":
        application: Any = Emulator(api_keys={KEY})
    else:
        created, turn = asyncio.run(record_one_turn())
        secret = {"value": "ek_" + "0" * 32, "expires_at": 0, "session": json.loads(created)["session"]}
        application = bare_app(json.dumps(secret).encode(), created, turn, len(turn_appends()))

    class AnnouncingServer(Server):  # type: ignore[misc]
        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            print(f"PORT {port.getHost().port}", flush=True)

    AnnouncingServer(
        application=application,
        endpoints=["tcp:port=0:interface=127.0.0.1"],
        signal_handlers=True,
        verbosity=0,
        websocket_max_message_size=32 * 1024 * 1024,
    ).run()


def start_server(kind: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.emulator", "--serve", kind],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("PORT "):
            return process, int(line.split()[1])
    raise RuntimeError(f"{kind} server did not start")


# --- load -------------------------------------------------------------------------------------


async def rest_load(port: int, clients: int, seconds: float) -> dict[str, float]:
    """Keep-alive HTTP/1.1 over raw asyncio streams: a client far cheaper than the server it loads,
    so the figures are the server's (an httpx client topped out below the servers' rates)."""
    body = json.dumps(BODY).encode()
    request = (
        f"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                errors += not head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": errors,
    }


async def socket_load(port: int, sockets: int, seconds: float) -> dict[str, float]:
    from websockets.asyncio.client import connect

    appends = turn_appends()
    audio_seconds_per_turn = len(appends) * CHUNK_MS / 1000
    events = turns = 0
    deadline = time.perf_counter() + seconds

    async def session() -> None:
        nonlocal events, turns
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, max_size=None) as ws:
            await ws.recv()  # session.created
            while time.perf_counter() < deadline:
                for frame in appends:
                    await ws.send(frame)
                while True:
                    frame = await ws.recv()
                    events += 1
                    if '"type":"rate_limits.updated"' in frame:
                        break
                turns += 1

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sockets)))
    elapsed = time.perf_counter() - started
    return {
        "events_per_s": events / elapsed,
        "turns_per_s": turns / elapsed,
        "audio_in_s_per_s": turns * audio_seconds_per_turn / elapsed,
        "client_frames_per_s": turns * len(appends) / elapsed,
    }


def measure(kind: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    process, port = start_server(kind)
    try:
        asyncio.run(rest_load(port, args.http, 0.5))  # warm up connections and code paths
        rest = asyncio.run(rest_load(port, args.http, args.seconds))
        ws = asyncio.run(socket_load(port, args.sockets, args.seconds))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {"rest": rest, "ws": ws}


def best(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        "rest": max((r["rest"] for r in results), key=lambda r: r["rate"]),
        "ws": max((r["ws"] for r in results), key=lambda r: r["events_per_s"]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured phase")
    parser.add_argument("--http", type=int, default=16, help="concurrent REST clients")
    parser.add_argument("--sockets", type=int, default=8, help="concurrent realtime sessions")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--serve", choices=["emulator", "bare"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    print(
        f"emulator benchmark on {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}), Python "
        f"{platform.python_version()}: each server is daphne in its own process; {args.http} REST clients / "
        f"{args.sockets} realtime sessions, {args.seconds:g} s per phase, best of {args.rounds} rounds",
        flush=True,
    )
    # Alternate the servers and keep each one's best round: the machine is shared, and the best
    # round is the one least disturbed by other work.
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {"bare": [], "emulator": []}
    for _ in range(args.rounds):
        for kind in rounds:
            rounds[kind].append(measure(kind, args))
    bare, emulator = (best(rounds[kind]) for kind in ("bare", "emulator"))
    rest_b, rest_e = bare["rest"], emulator["rest"]
    ws_b, ws_e = bare["ws"], emulator["ws"]

    def row(
        label: str, bare_value: float, emulator_value: float, digits: int = 0, ratio: bool = True
    ) -> None:
        shown = f"{emulator_value / bare_value:>7.2f}" if ratio and bare_value else ""
        print(f"{label:34} {bare_value:>16.{digits}f} {emulator_value:>16.{digits}f} {shown}")

    print(f"{'':34} {'bare daphne':>16} {'emulator':>16} {'ratio':>7}")
    row("REST client_secrets (req/s)", rest_b["rate"], rest_e["rate"])
    row("  p50 latency (ms)", rest_b["p50_ms"], rest_e["p50_ms"], 1, ratio=False)
    row("  p99 latency (ms)", rest_b["p99_ms"], rest_e["p99_ms"], 1, ratio=False)
    row("WS server events (events/s)", ws_b["events_per_s"], ws_e["events_per_s"])
    row("WS client appends (frames/s)", ws_b["client_frames_per_s"], ws_e["client_frames_per_s"])
    row("WS spoken turns (turns/s)", ws_b["turns_per_s"], ws_e["turns_per_s"], 1)
    row("input audio (seconds per second)", ws_b["audio_in_s_per_s"], ws_e["audio_in_s_per_s"], 1)
    if rest_e["errors"] or rest_b["errors"]:
        print(f"non-200 answers: bare {rest_b['errors']:.0f}, emulator {rest_e['errors']:.0f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
