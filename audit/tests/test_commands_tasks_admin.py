from __future__ import annotations

from io import StringIO

import orjson
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from audit import tasks
from audit.chain import PLATFORM_CHAIN, chain_for
from audit.models import AuditCheckpoint, AuditEvent
from audit.tests.conftest import record_many
from tenants.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- export_audit / verify_audit --------------------------------------------------------------


def test_export_then_verify_offline(tmp_path, tenant, capsys):
    record_many(tenant, 12)
    target = tmp_path / "trail.csv"
    _, err = run("export_audit", tenant.slug, "--output", str(target))
    assert "Exported 13 rows (seq 1..13" in err
    assert "100%|" in capsys.readouterr().err  # the progress bar reached the end
    out, _ = run("verify_audit", "--export", str(target))
    assert out.startswith(f"OK export {target}: 13 rows (seq 1..13) of {chain_for(tenant.pk)}")
    event = AuditEvent.objects.get(action="export.created")
    assert event.actor_label == "manage.py export_audit"


def test_export_with_filters_and_formats(tmp_path, tenant):
    record_many(tenant, 4)
    record_many(tenant, 2, action="key.revoked")
    jsonl = tmp_path / "revoked.jsonl"
    _, err = run(
        "export_audit",
        tenant.slug,
        "--format",
        "jsonl",
        "--action",
        "key.revoked",
        "-o",
        str(jsonl),
        "--no-progress",
    )
    assert "Exported 2 rows" in err
    assert len(jsonl.read_bytes().splitlines()) == 4  # manifest, 2 rows, trailer
    pdf = tmp_path / "report.pdf"
    _, err = run("export_audit", tenant.slug, "--format", "pdf", "-o", str(pdf), "--since", "2020-01-01")
    assert pdf.read_bytes().startswith(b"%PDF-")
    assert "chain verified OK" in err


def test_export_of_signed_checkpoints(tmp_path, tenant):
    record_many(tenant, 2)
    tasks.audit_checkpoint_heads()
    record_many(tenant, 1)
    tasks.audit_checkpoint_heads()
    target = tmp_path / "checkpoints.jsonl"
    run("export_audit", tenant.slug, "--checkpoints", "-o", str(target))
    rows = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert [r["seq"] for r in rows] == [3, 4]
    assert rows[1]["prev_signature"] == rows[0]["signature"]
    assert AuditEvent.objects.filter(action="export.created", details__contains='"checkpoints"').count() == 1


def test_export_refuses_bad_arguments(tmp_path, tenant):
    with pytest.raises(CommandError, match="no tenant"):
        run("export_audit", "nope", "-o", str(tmp_path / "x"))
    with pytest.raises(CommandError, match="since must be"):
        run("export_audit", tenant.slug, "--since", "someday", "-o", str(tmp_path / "x"))


def test_verify_reports_every_chain_and_fails_on_a_broken_one(tenant, other_tenant, tamper):
    record_many(tenant, 3)
    out, _ = run("verify_audit")
    assert out.count("OK tenant:") == 2
    tamper("UPDATE audit_auditevent SET action = 'x' WHERE chain = %s AND seq = 2", [chain_for(tenant.pk)])
    with pytest.raises(CommandError, match="1 of 2 broken"):
        run("verify_audit")
    with pytest.raises(CommandError):
        run("verify_audit", "--tenant", tenant.slug, "--json")
    out, _ = run("verify_audit", "--tenant", other_tenant.slug, "--json")
    assert orjson.loads(out)["ok"] is True


def test_verify_refuses_a_tampered_export(tmp_path, tenant):
    record_many(tenant, 3)
    target = tmp_path / "trail.jsonl"
    run("export_audit", tenant.slug, "--format", "jsonl", "-o", str(target), "--no-progress")
    target.write_bytes(target.read_bytes().replace(b'"user1"', b'"user7"'))
    out = StringIO()
    with pytest.raises(CommandError, match="1 of 1 broken"):
        call_command("verify_audit", "--export", str(target), stdout=out)
    assert "BROKEN export" in out.getvalue()
    assert "at seq 3: altered" in out.getvalue()


# --- Periodic tasks ---------------------------------------------------------------------------


def test_beat_runs_checkpoints_verification_and_purge():
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for task in (tasks.audit_checkpoint_heads, tasks.audit_verify_chains, tasks.audit_purge_expired):
        assert task.name in schedule
    assert "tokens.tasks.client_secret_expire_sweep" in schedule  # added to, not replaced


def test_checkpoint_task_signs_only_chains_that_grew(tenant, other_tenant):
    assert tasks.audit_checkpoint_heads() == 2
    assert tasks.audit_checkpoint_heads() == 0
    record_many(tenant, 1)
    assert tasks.audit_checkpoint_heads() == 1
    assert AuditCheckpoint.objects.filter(chain=chain_for(tenant.pk)).count() == 2


def test_verify_task_records_each_broken_chain_for_operators(tenant, tamper):
    record_many(tenant, 2)
    assert tasks.audit_verify_chains() == 0
    assert not AuditEvent.objects.filter(action="audit.verification_failed").exists()
    tamper("DELETE FROM audit_auditevent WHERE chain = %s AND seq = 2", [chain_for(tenant.pk)])
    assert tasks.audit_verify_chains() == 1
    alarm = AuditEvent.objects.get(action="audit.verification_failed")
    assert alarm.chain == PLATFORM_CHAIN
    assert alarm.target_id == chain_for(tenant.pk)
    assert (alarm.details["seq"], alarm.details["kind"]) == (2, "deleted")


def test_purge_task_reports_rows_purged(tenant):
    assert tasks.audit_purge_expired() == 0


# --- Django admin -----------------------------------------------------------------------------


def test_operators_can_read_but_never_change_audit_rows_in_the_admin(client, tenant):
    record_many(tenant, 2, action="key.revoked")
    tasks.audit_checkpoint_heads()
    operator = UserFactory(username="ops", is_staff=True, is_superuser=True)
    client.force_login(operator)
    event = AuditEvent.objects.filter(chain=chain_for(tenant.pk)).first()
    checkpoint = AuditCheckpoint.objects.first()
    assert client.get("/admin/audit/auditevent/").status_code == 200
    page = client.get("/admin/audit/auditevent/?family=key")
    assert page.status_code == 200
    assert page.content.count(b"key.revoked") >= 2
    assert b"tenant.created" not in page.content
    assert client.get(f"/admin/audit/auditevent/{event.pk}/change/").status_code == 200
    assert client.get("/admin/audit/auditcheckpoint/").status_code == 200
    for url in (
        "/admin/audit/auditevent/add/",
        f"/admin/audit/auditevent/{event.pk}/delete/",
        f"/admin/audit/auditcheckpoint/{checkpoint.pk}/delete/",
    ):
        assert client.post(url, {"post": "yes"}).status_code == 403
    response = client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"action": "x"})
    assert response.status_code == 403
    event.refresh_from_db()
    assert event.action == "tenant.created"
