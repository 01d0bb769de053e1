"""Deploy hygiene: what operators run (docker-compose.yml, the Dockerfile, .env.example) matches the code.

No Docker engine runs on the build machines, so the images themselves are not built here; these
tests check what can go stale without one:

- the environment docker-compose.yml gives the app passes `check --deploy --fail-level WARNING`;
- every `python manage.py …` command in the compose file and the image's CMD exists and accepts
  its arguments, and every Celery command names our app;
- every environment variable the code reads is listed in `.env.example` (the operators' reference),
  and every variable the compose file passes to the app is one the code reads.

Seen to fail: rename `--proxy-headers` in `realtime_platform/management/commands/serve.py` and
`test_manage_commands_in_deploy_files_parse` fails naming the compose service; add
`env_int("RTP_NEW_THING", 1)` to settings.py and `test_every_variable_read_is_in_env_example`
fails naming `RTP_NEW_THING`; set `DJANGO_SECURE_SSL_REDIRECT: "false"` without
`DJANGO_BEHIND_PROXY` in the compose file and the check --deploy test fails with security.W008.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from django.core.management import get_commands, load_command_class

from realtime_platform.tests.test_settings import run_manage

ROOT = Path(__file__).resolve().parents[2]
APPS = ["realtime_platform", "tenants", "tokens", "usage", "audit", "relay", "upstream"]
# ${NAME:?message} must be supplied; ${NAME:-default} has a default; ${NAME} is plain.
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::(?P<op>[?-])(?P<arg>[^}]*))?\}")
# Variables that configure the container or the runner, not the application.
NOT_APP_SETTINGS = {"POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def substitute(value: str, supplied: dict[str, str]) -> str:
    """What `docker compose` makes of a value, with `supplied` as the operator's .env."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in supplied:
            return supplied[name]
        if op == "?":
            raise AssertionError(f"{name} is required by docker-compose.yml: {arg}")
        return arg if op == "-" else ""

    return SUBSTITUTION.sub(one, value)


def required_variables() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return {m["name"] for m in SUBSTITUTION.finditer(text) if m["op"] == "?"}


def app_services() -> dict[str, dict[str, Any]]:
    """Services built from our image (they carry `build` through the `x-app` anchor)."""
    return {name: spec for name, spec in compose()["services"].items() if "build" in spec}


def test_compose_environment_passes_check_deploy(tmp_path):
    operator_env = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "RTP_FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "RTP_API_KEY_PEPPER": secrets.token_urlsafe(32),
        "RTP_AUDIT_SIGNING_KEY": secrets.token_urlsafe(32),
    }
    assert required_variables() == set(operator_env), "the compose file's required secrets changed"
    web = app_services()["web"]
    env = {key: substitute(str(value), operator_env) for key, value in web["environment"].items()}
    # The compose file points at its own `postgres` service; `check` does not connect to it.
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def deploy_commands() -> list[tuple[str, list[str]]]:
    commands = [(f"compose service {name}", list(spec["command"])) for name, spec in app_services().items()]
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"(?m)^CMD (\[.*\])$", dockerfile)
    assert cmd, "the Dockerfile has no exec-form CMD"
    commands.append(("Dockerfile CMD", json.loads(cmd.group(1))))
    return commands


@pytest.mark.parametrize(("where", "argv"), deploy_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_manage_commands_in_deploy_files_parse(where, argv):
    if argv[0] == "celery":
        assert argv[1:3] == ["-A", "realtime_platform"], f"{where}: Celery must load our app: {argv}"
        assert argv[3] in {"worker", "beat"}, f"{where}: unexpected Celery command {argv[3]}"
        return
    assert argv[:2] == ["python", "manage.py"], f"{where}: {shlex.join(argv)}"
    name, args = argv[2], argv[3:]
    commands = get_commands()
    assert name in commands, f"{where}: no management command {name!r}"
    parser = load_command_class(commands[name], name).create_parser("manage.py", name)
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # argparse reports unknown or malformed options this way
        raise AssertionError(f"{where}: `manage.py {name}` rejects {shlex.join(args)}") from exc


def variables_read_by_code() -> set[str]:
    pattern = re.compile(r'(?:env_[a-z_]+|os\.environ\.get|os\.getenv)\(\s*"([A-Z][A-Z0-9_]+)"')
    names: set[str] = set()
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "tests" in path.parts or path.name == "testing.py":
                continue
            names.update(pattern.findall(path.read_text()))
    return names


def variables_in_env_example() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"(?m)^([A-Z][A-Z0-9_]+)=", text))


def test_every_variable_read_is_in_env_example():
    read = variables_read_by_code()
    assert len(read) > 40, "the scan of the code found too few variables to be right"
    missing = sorted(read - variables_in_env_example())
    assert not missing, f".env.example (the operators' reference) lacks {missing}"


def test_compose_passes_only_variables_the_code_reads():
    known = variables_read_by_code() | variables_in_env_example()
    for name, spec in app_services().items():
        unknown = sorted(set(spec["environment"]) - known - NOT_APP_SETTINGS)
        assert not unknown, f"compose service {name} sets {unknown}, which nothing reads (a typo?)"
