"""Settings come from the environment; production settings pass `check --deploy` cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "p" * 20 + "-production-secret-key-with-enough-entropy-Xy93Kq",
    "DJANGO_ALLOWED_HOSTS": "rtp.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://rtp.example.com",
    "RTP_FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "RTP_API_KEY_PEPPER": "pepper-" + "q" * 40,
    "RTP_AUDIT_SIGNING_KEY": "audit-" + "z" * 40,
}


def run_manage(*args, env_overrides, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RTP_"))}
    env.update({"RTP_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "RTP_READ_DOTENV": "false"})
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_passes_with_production_settings(tmp_path):
    result = run_manage(
        "check", "--deploy", "--fail-level", "WARNING", env_overrides=PRODUCTION_ENV, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_off_refuses_the_development_secret_key(tmp_path):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "DJANGO_SECRET_KEY"}
    result = run_manage("check", env_overrides=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is unset" in result.stderr


def test_bad_boolean_is_a_clear_configuration_error(tmp_path):
    result = run_manage("check", env_overrides={**PRODUCTION_ENV, "DJANGO_DEBUG": "maybe"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_dotenv_file_is_read_and_real_environment_wins(tmp_path, monkeypatch):
    from realtime_platform.env import env_str, read_dotenv

    dotenv = tmp_path / ".env"
    dotenv.write_text("RTP_TEST_ONLY_A=from-file\nRTP_TEST_ONLY_B=from-file\n")
    monkeypatch.setenv("RTP_TEST_ONLY_B", "from-env")
    monkeypatch.delenv("RTP_TEST_ONLY_A", raising=False)
    read_dotenv(dotenv)
    assert env_str("RTP_TEST_ONLY_A") == "from-file"
    assert env_str("RTP_TEST_ONLY_B") == "from-env"
    monkeypatch.delenv("RTP_TEST_ONLY_A")


def test_database_url_selects_postgres(tmp_path):
    from realtime_platform.env import database_from_url

    config = database_from_url("postgres://app:pw@db.internal:5433/rtp")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["HOST"], config["PORT"], config["NAME"]) == ("db.internal", 5433, "rtp")
