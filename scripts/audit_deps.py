"""`make audit-deps`: pip-audit over the locked dependency set, failing loudly when it cannot tell.

pip-audit itself exits 0 when the advisory database cannot be reached: every package is then
reported as "not found ... could not be audited" and nothing is checked. This wrapper refuses that:

1. it first asks the advisory service about one known package (a 5 s probe); unreachable: it
   prints "FAILED: advisory database unreachable" and exits 2;
2. it runs `pip-audit -r requirements/base.txt -r requirements/dev.txt --no-deps --disable-pip`
   (JSON output), with every id listed in `.pip-audit-ignore` passed as `--ignore-vuln`;
3. any known vulnerability that is not an exception, and any package that could not be audited,
   fails (exit 1), listed by name.

`--probe` only does step 1 (exit 0: reachable, 2: not); `make check` uses it to decide whether to
run this gate or print "SKIPPED: advisory database unreachable".

`.pip-audit-ignore`: one vulnerability id per line, each with its reason after a `#` (a line
without a reason is refused, so no exception goes undocumented).

Environment: PIP_AUDIT_SERVICE (`pypi`, the default, or `osv`), PIP_AUDIT_OSV_URL (an OSV mirror;
tests/gates/test_audit_deps.py points it at a local stub), PIP_AUDIT_IGNORE_FILE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ["requirements/base.txt", "requirements/dev.txt"]
IGNORE_FILE = Path(os.environ.get("PIP_AUDIT_IGNORE_FILE", ROOT / ".pip-audit-ignore"))
SERVICE = os.environ.get("PIP_AUDIT_SERVICE", "pypi")  # pip-audit's -s: pypi (default) or osv
OSV_URL = os.environ.get("PIP_AUDIT_OSV_URL", "https://api.osv.dev/v1/query")
PROBE_TIMEOUT = 5.0


def probe() -> str | None:
    """None if the advisory service answers a known package's query, else why not."""
    if SERVICE == "osv":
        if not OSV_URL.startswith(("https://", "http://127.0.0.1:")):
            return f"PIP_AUDIT_OSV_URL must be https (or a loopback test stub): {OSV_URL}"
        request = urllib.request.Request(  # noqa: S310 (checked just above)
            OSV_URL,
            data=json.dumps({"package": {"name": "django", "ecosystem": "PyPI"}, "version": "5.2"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        expected_key = "vulns"
    else:
        request = urllib.request.Request("https://pypi.org/pypi/django/5.2/json")
        expected_key = "vulnerabilities"
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT) as response:  # noqa: S310 (https or a test stub)
            body = json.load(response)
    except (OSError, ValueError) as exc:  # URLError, HTTPError (404 from a mirror), timeouts, bad JSON
        return f"{request.full_url}: {exc}"
    if expected_key not in body:
        return f"{request.full_url}: answer has no {expected_key!r} field (not the advisory service?)"
    return None


def exceptions() -> list[str]:
    ids = []
    if not IGNORE_FILE.exists():
        return ids
    for number, raw in enumerate(IGNORE_FILE.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vuln_id, _, reason = line.partition("#")
        if not reason.strip():
            sys.exit(f"{IGNORE_FILE.name}:{number}: {vuln_id.strip()} has no reason (write it after a #)")
        ids.append(vuln_id.strip())
    return ids


def main(argv: list[str]) -> int:
    problem = probe()
    if "--probe" in argv:
        if problem is not None:
            print(f"advisory database unreachable ({SERVICE}): {problem}", file=sys.stderr)
        return 0 if problem is None else 2
    if problem is not None:
        print(f"FAILED: advisory database unreachable ({SERVICE}): {problem}", file=sys.stderr)
        print("  nothing was audited; run `make audit-deps` where it can be reached", file=sys.stderr)
        return 2
    ignored = exceptions()
    command = [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip", "-f", "json", "-s", SERVICE]
    command += ["--osv-url", OSV_URL] if SERVICE == "osv" else []
    command += [arg for path in REQUIREMENTS for arg in ("-r", path)]
    command += [arg for vuln_id in ignored for arg in ("--ignore-vuln", vuln_id)]
    print("$ " + " ".join(command[2:]), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        report = json.loads(result.stdout)
    except ValueError:
        print(result.stdout + result.stderr, file=sys.stderr)
        print("FAILED: pip-audit gave no report", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    unaudited = [f"{d['name']} ({d.get('skip_reason', '')})" for d in dependencies if "skip_reason" in d]
    found = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions') or ['-'])})"
        for d in dependencies
        for v in d.get("vulns", [])
    ]
    for line in found:
        print(f"  VULNERABLE {line}", file=sys.stderr)
    for line in unaudited:
        print(f"  NOT AUDITED {line}", file=sys.stderr)
    audited = len(dependencies) - len(unaudited)
    print(f"{audited} packages audited, {len(found)} known vulnerabilities, {len(ignored)} exceptions")
    if found or unaudited:
        print("FAILED: see above (add a justified exception to .pip-audit-ignore only if it cannot apply)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
