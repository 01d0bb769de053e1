from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEvent
from tenants.auth import api_key_authenticate
from tenants.models import ApiKey, Membership, Tenant


def run(*args, **kwargs):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, **kwargs)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_create_tenant_then_a_key_that_works():
    out, _ = run("create_tenant", "acme", "--name", "Acme Inc")
    assert out.strip().splitlines()[-1] == "acme"
    out, err = run(
        "create_api_key",
        "acme",
        "--name",
        "ci",
        "--scopes",
        "secrets:create",
        "manage:read",
        "--expires-in",
        "30d",
    )
    raw = out.strip().splitlines()[-1]
    principal = api_key_authenticate(raw)
    assert principal.tenant.slug == "acme"
    assert principal.scopes == {"secrets:create", "manage:read"}
    assert principal.api_key.expires_at is not None
    assert raw not in err  # stderr names the prefix only
    assert AuditEvent.objects.filter(action="key.created", actor_label="manage.py create_api_key").exists()


@pytest.mark.django_db
def test_create_api_key_defaults_to_every_scope():
    run("create_tenant", "acme")
    raw = run("create_api_key", "acme", "--name", "all")[0].strip().splitlines()[-1]
    assert set(api_key_authenticate(raw).scopes) == {
        "secrets:create",
        "realtime:connect",
        "manage:read",
        "manage:write",
    }


@pytest.mark.django_db
def test_commands_fail_clearly():
    with pytest.raises(CommandError, match="no tenant"):
        run("create_api_key", "ghost", "--name", "x")
    run("create_tenant", "acme")
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "acme")
    with pytest.raises(CommandError, match="invalid duration"):
        run("create_api_key", "acme", "--name", "x", "--expires-in", "soon")
    with pytest.raises(CommandError, match="Unknown scope"):
        run("create_api_key", "acme", "--name", "x", "--scopes", "root")


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_prints_the_key_once(monkeypatch):
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "a-long-demo-password")
    first, _ = run("seed_demo")
    second, _ = run("seed_demo")
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert ApiKey.objects.filter(tenant__slug="demo").count() == 1
    assert Membership.objects.filter(tenant__slug="demo", role="owner").count() == 1
    key_line = next(line for line in first.splitlines() if "API key:" in line)
    raw = key_line.split()[2]
    assert api_key_authenticate(raw).tenant.slug == "demo"
    assert raw not in second
    assert "exists" in second
