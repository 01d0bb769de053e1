"""`make audit-deps` (scripts/audit_deps.py) fails when it should: on a known vulnerability in the
locked set, on an unreachable advisory database, on an exception without a reason; and passes on a
vulnerability with a documented exception.

This machine cannot reach a real advisory database (pypi.org's JSON API answers 404 through the
local mirror, api.osv.dev does not resolve), so the advisory service here is a local stub speaking
OSV's query API, the only double in this module: it reports one made-up vulnerability in the locked
daphne and nothing else. pip-audit itself runs for real over requirements/base.txt and dev.txt.

Seen to fail on purpose: with the ignore handling removed from `main` (no `--ignore-vuln`),
`test_a_documented_exception_passes` fails with exit status 1 and "VULNERABLE daphne 4.2.3:
GHSA-test-gate-0001".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.gates.test_dependency_pins import locked

ROOT = Path(__file__).resolve().parents[2]
VULN_ID = "GHSA-test-gate-0001"


class OsvStub(BaseHTTPRequestHandler):
    daphne = str(locked("requirements/base.txt")["daphne"])

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        package, version = query["package"]["name"], query["version"]
        body: dict = {}
        if package == "daphne" and version == self.daphne:
            body = {
                "vulns": [
                    {
                        "id": VULN_ID,
                        "summary": "made-up vulnerability for the gate's own test",
                        "affected": [
                            {
                                "package": {"name": "daphne", "ecosystem": "PyPI"},
                                "ranges": [
                                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "99.0"}]}
                                ],
                                "versions": [self.daphne],
                            }
                        ],
                    }
                ]
            }
        elif package == "django" and version == "5.2":  # the wrapper's reachability probe
            body = {"vulns": []}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def osv_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OsvStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()


def audit(osv_url: str, ignore_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PIP_AUDIT_SERVICE": "osv",
        "PIP_AUDIT_OSV_URL": osv_url,
        "PIP_AUDIT_IGNORE_FILE": str(ignore_file),
    }
    return subprocess.run(
        [sys.executable, "scripts/audit_deps.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_known_vulnerability_fails_the_gate(osv_url, tmp_path):
    result = audit(osv_url, tmp_path / "none")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"VULNERABLE daphne {OsvStub.daphne}: {VULN_ID} (fixed in 99.0)" in result.stderr
    assert "NOT AUDITED" not in result.stderr  # every other package was checked, and clean
    assert "1 known vulnerabilities" in result.stdout


def test_a_documented_exception_passes(osv_url, tmp_path):
    ignore = tmp_path / "ignore"
    ignore.write_text(f"{VULN_ID}  # made up for this test: cannot apply\n")
    result = audit(osv_url, ignore)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 known vulnerabilities, 1 exceptions" in result.stdout


def test_an_exception_without_a_reason_is_refused(osv_url, tmp_path):
    ignore = tmp_path / "ignore"
    ignore.write_text(f"{VULN_ID}\n")
    result = audit(osv_url, ignore)
    assert result.returncode != 0
    assert f"{VULN_ID} has no reason" in result.stderr


def test_an_unreachable_database_fails_loudly_and_the_probe_says_so(tmp_path):
    closed = "http://127.0.0.1:9/v1/query"  # discard port: nothing listens
    result = audit(closed, tmp_path / "none")
    assert result.returncode == 2
    assert "FAILED: advisory database unreachable" in result.stderr
    probe = audit(closed, tmp_path / "none", "--probe")
    assert probe.returncode == 2
    assert "advisory database unreachable" in probe.stderr
