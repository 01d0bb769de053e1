"""`manage.py run_emulator` serves the emulator on its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_run_emulator_serves_client_secrets_on_the_port_it_prints(tmp_path):
    env = {
        **os.environ,
        "RTP_VAR_DIR": str(tmp_path),
        "RTP_EMULATOR_API_KEY": "sk-standalone-emulator-key-01",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_emulator", "--port", "0", "--show-key"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = ""
        for line in process.stdout:
            if "OpenAI emulator on" in line:
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1 \(key (\S+)\)", line)
        assert match, line
        base_url, key = f"http://127.0.0.1:{match.group(1)}/v1", match.group(2)
        assert key == "sk-standalone-emulator-key-01"
        response = httpx.post(
            f"{base_url}/realtime/client_secrets",
            headers={"Authorization": f"Bearer {key}"},
            json={},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["value"].startswith("ek_")
        assert httpx.post(f"{base_url}/realtime/client_secrets", json={}, timeout=10).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
