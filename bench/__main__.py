"""Run the named benchmark modules (default: all), each in its own process so each can pick its
own database and settings: `python -m bench` or `python -m bench issuance audit`."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = {
    "emulator": "bench.emulator",  # the OpenAI emulator's own REST and WebSocket rates vs bare daphne
    "relay": "bench.relay",  # latency the relay adds (daphne and uvicorn) vs a direct emulator session
    "issuance": "bench.issuance",  # POST /v1/realtime/client_secrets: platform vs direct-to-emulator
    "audit": "bench.audit",  # audit trail: export vs COPY, export RSS, recorder and verifier rates
    "jobs": "bench.jobs",  # expiry sweep vs one UPDATE, rollup vs one INSERT…SELECT, task memory
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"== bench {name}", flush=True)
        failed += subprocess.call([sys.executable, "-m", BENCHMARKS[name]]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
