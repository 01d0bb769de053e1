"""Servers and parsers with known security fixes are pinned at their fixed versions, and the locked
requirements actually install what pyproject.toml asks for (`make check` runs this module).

- Every entry of KNOWN_FIXES that is a direct dependency must have a lower bound in pyproject.toml
  at or above the fixed version, with the reason in a comment on its line.
- Every version locked in requirements/base.txt and requirements/dev.txt must satisfy every
  specifier of pyproject.toml (a hand-edited lock, or a pyproject bump without `make lock`, fails),
  and the KNOWN_FIXES minimums (transitive packages such as h11 included).

Seen to fail on purpose: with `"daphne>=4.2.0",` in pyproject.toml,
`test_servers_with_known_fixes_are_pinned_at_the_fixed_version` fails with
"daphne: pyproject allows 4.2.0, below 4.2.3 (WebSocket message size cap)"; with `daphne==4.2.1`
in requirements/base.txt, `test_locked_requirements_satisfy_pyproject_and_known_fixes` fails with
"requirements/base.txt: daphne 4.2.1 does not satisfy >=4.2.3 (pyproject.toml)" and "... is below
4.2.3 (WebSocket message size cap)". Without the comment on django's line in pyproject.toml, the
first fails with "django: its pyproject line does not say why it is pinned".
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

# package -> (first fixed version, what the fix is)
KNOWN_FIXES = {
    "daphne": ("4.2.3", "WebSocket message size cap"),
    "django": ("5.2.8", "CVE-2025-64459: SQL injection through Q/QuerySet _connector"),
    "h11": ("0.16.0", "CVE-2025-43859: request smuggling through lenient chunked bodies (uvicorn, httpx)"),
}


def pyproject_requirements(*, extras: bool = True) -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    if extras:
        listed += [r for extra in project["optional-dependencies"].values() for r in extra]
    return {canonicalize_name(req.name): req for req in map(Requirement, listed)}


def locked(path: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def lowest_allowed(specifier: SpecifierSet) -> Version | None:
    bounds = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=", ">")]
    return max(bounds) if bounds else None


def test_servers_with_known_fixes_are_pinned_at_the_fixed_version():
    requirements = pyproject_requirements()
    pyproject_lines = (ROOT / "pyproject.toml").read_text().splitlines()
    problems = []
    for name, (fixed, why) in KNOWN_FIXES.items():
        requirement = requirements.get(name)
        if requirement is None:
            continue  # transitive: only the lock is checked (next test)
        lowest = lowest_allowed(requirement.specifier)
        if lowest is None or lowest < Version(fixed):
            problems.append(f"{name}: pyproject allows {lowest or 'any version'}, below {fixed} ({why})")
        line = next(line for line in pyproject_lines if re.match(rf'\s*"{name}[\[<>=~!]', line))
        if "#" not in line:
            problems.append(f"{name}: its pyproject line does not say why it is pinned ({why})")
    assert not problems, problems


def test_locked_requirements_satisfy_pyproject_and_known_fixes():
    problems = []
    for path, requirements in (
        ("requirements/base.txt", pyproject_requirements(extras=False)),
        ("requirements/dev.txt", pyproject_requirements()),
    ):
        pins = locked(path)
        assert "daphne" in pins, f"{path} parsed to nothing"  # the parser reads real content
        for name, requirement in requirements.items():
            if name not in pins:
                if requirement.marker is None or requirement.marker.evaluate():
                    problems.append(f"{path}: {name} is required but not locked")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                problems.append(
                    f"{path}: {name} {pins[name]} does not satisfy {requirement.specifier} (pyproject.toml)"
                )
        for name, (fixed, why) in KNOWN_FIXES.items():
            if pins.get(name, Version(fixed)) < Version(fixed):
                problems.append(f"{path}: {name} {pins[name]} is below {fixed} ({why})")
            if name not in pins:
                problems.append(f"{path}: {name} is not locked at all")
    assert not problems, problems
