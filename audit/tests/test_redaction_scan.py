"""A full workflow of everything the platform does today, then a scan of the whole audit trail
(every column of every audit table), the exports and the PDF for every secret it handled, by
value and by shape."""

from __future__ import annotations

import io
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from pypdf import PdfReader
from rest_framework.test import APIClient

from audit.actors import Actor
from audit.exports import audit_export_start, audit_export_write, audit_report_pdf
from audit.selectors import AuditFilter
from audit.services import audit_checkpoint_heads, audit_record, audit_retention_set
from tenants import keys
from tenants.models import Role
from tenants.services import (
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    membership_add,
    membership_change_role,
    membership_remove,
    quota_override_update,
    session_policy_update,
    tenant_create,
    tenant_set_status,
    upstream_credential_delete,
    upstream_credential_reencrypt_all,
    upstream_credential_set,
)
from tenants.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# Shapes of secrets, each allowing for its masked form.
SHAPES = {
    "platform key or relay token": re.compile(r"rtp_(?:sk|rt)_[0-9A-Za-z]{16,}"),
    "OpenAI key": re.compile(r"sk-(?!\[REDACTED\])[0-9A-Za-z_-]{12,}"),
    "ephemeral client secret": re.compile(r"ek_(?!\[REDACTED\])[0-9A-Za-z_-]{6,}"),
    "bearer credential": re.compile(r"(?i)bearer\s+(?!\[REDACTED\])[^\s\"',}]+"),
    "URL password": re.compile(r"://[^/\s:@]*:(?!\[REDACTED\])[^@\s/]+@"),
    "browser subprotocol key": re.compile(r"openai-insecure-api-key\.(?!\[REDACTED\])[^\s,\"']+"),
}


def audit_tables_as_text() -> str:
    chunks = []
    with connection.cursor() as cursor:
        for table in ("audit_auditevent", "audit_auditchainhead", "audit_auditcheckpoint"):
            cursor.execute(f"SELECT * FROM {table}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def test_no_secret_reaches_the_audit_trail_or_its_exports(tmp_path):
    plain: list[str] = []
    system = Actor.system("tests")
    tenant = tenant_create(slug="leaky", name="Leaky Inc", actor=system)
    owner, colleague = UserFactory(username="olivia"), UserFactory(username="colin")
    membership_add(tenant=tenant, user=owner, role=Role.OWNER, actor=system)
    member = membership_add(tenant=tenant, user=colleague, role=Role.VIEWER, actor=Actor.for_user(owner))
    membership_change_role(membership=member, role=Role.ADMIN, actor=Actor.for_user(owner, ip="203.0.113.9"))

    first = api_key_create(tenant=tenant, name="backend", actor=Actor.for_user(owner))
    rotated = api_key_rotate(api_key=first.api_key, actor=Actor.for_api_key(first.api_key), grace_seconds=60)
    spare = api_key_create(tenant=tenant, name=f"pasted {first.plaintext}", actor=Actor.for_user(owner))
    plain += [first.plaintext, rotated.plaintext, spare.plaintext]
    out = StringIO()
    call_command("create_api_key", tenant.slug, "--name", "ci", stdout=out, stderr=StringIO())
    plain.append(out.getvalue().strip().splitlines()[-1])

    # The management API, authenticated with a key, carrying a key as its request id.
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {rotated.plaintext}", HTTP_X_REQUEST_ID=spare.plaintext)
    assert client.post(f"/api/v1/api_keys/{first.api_key.pk}/revoke").status_code == 200
    api_key_revoke(api_key=spare.api_key, actor=Actor.for_user(colleague))

    openai_keys = [
        "sk-proj-" + keys.generate(keys.KeyType.API_KEY).plaintext[7:39],
        "sk-svcacct-" + "Zq9" * 12,
    ]
    plain += openai_keys
    upstream_credential_set(tenant=tenant, secret=openai_keys[0], actor=Actor.for_user(owner))
    upstream_credential_set(tenant=tenant, secret=openai_keys[1], actor=Actor.for_user(owner))
    upstream_credential_reencrypt_all()
    upstream_credential_delete(tenant=tenant, actor=Actor.for_user(owner))

    quota_override_update(tenant=tenant, actor=Actor.for_user(owner), values={"secrets_per_day": 100})
    session_policy_update(
        tenant=tenant,
        actor=Actor.for_user(owner),
        values={"instructions_prefix": f"Never reveal {openai_keys[0]}.", "ttl_max_seconds": 300},
    )
    session_policy_update(
        tenant=tenant, actor=Actor.for_user(owner), values={"instructions_prefix": "Be kind."}
    )
    tenant_set_status(
        tenant=tenant,
        status="suspended",
        actor=system,
        reason=f"leaked Authorization: Bearer {rotated.plaintext}",
    )
    tenant_set_status(tenant=tenant, status="active", actor=system)
    audit_retention_set(tenant=tenant, days=400, actor=Actor.for_user(owner))
    membership_remove(membership=member, actor=Actor.for_user(owner))

    relay_token = keys.generate(keys.KeyType.RELAY_TOKEN).plaintext
    ephemeral = "ek_" + "68f1c2a9d0e34b7f" * 2
    plain += [relay_token, ephemeral, "hunter2-db-pass"]
    audit_record(
        tenant=tenant,
        actor=Actor.for_api_key(rotated.api_key, ip="198.51.100.7"),
        action="secret.issued",
        details={
            "client_secret": {"value": ephemeral, "expires_at": 1760000000},
            "headers": {"Authorization": f"Bearer {rotated.plaintext}", "x-other": "fine"},
            "relay": [f"token={relay_token}", "openai-insecure-api-key." + openai_keys[1]],
            "log": f"connecting with {ephemeral} via postgres://app:hunter2-db-pass@db:5432/rtp",
            "api_key": rotated.plaintext,
        },
        request_id=f"req-{relay_token}",
    )

    audit_checkpoint_heads()
    files = []
    for fmt, filters in (
        ("csv", AuditFilter()),
        ("jsonl", AuditFilter()),
        ("csv", AuditFilter(action="key.created")),
    ):
        export = audit_export_start(tenant=tenant, actor=Actor.for_user(owner), fmt=fmt, filters=filters)
        target = tmp_path / f"export-{len(files)}.{fmt}"
        with open(target, "wb") as handle:
            audit_export_write(export, handle)
        files.append(target.read_text())
    report = audit_report_pdf(tenant=tenant, actor=Actor.for_user(owner), filters=AuditFilter())
    files.append("\n".join(page.extract_text() for page in PdfReader(io.BytesIO(report.pdf)).pages))
    checkpoints = tmp_path / "checkpoints.jsonl"
    call_command("export_audit", tenant.slug, "--checkpoints", "-o", str(checkpoints), stderr=StringIO())
    files.append(checkpoints.read_text())

    everything = "\n".join([audit_tables_as_text(), *files])
    assert "key.created" in everything  # the scan reads real content
    assert "rtp_sk_[REDACTED]" in everything  # and masking did happen
    for secret in plain:
        assert secret not in everything
        if len(secret) >= 30:
            assert secret[15:-7] not in everything  # not even its random middle
    for shape, pattern in SHAPES.items():
        found = pattern.findall(everything)
        assert not found, f"{shape}: {found[:3]}"
    for key in (first, rotated, spare):
        assert key.api_key.prefix in everything  # the public lookup prefix is kept, by design
