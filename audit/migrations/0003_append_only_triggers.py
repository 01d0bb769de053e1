"""Make the audit trail append-only in the database itself, not just in the ORM.

PostgreSQL: triggers refuse UPDATE, DELETE and TRUNCATE of audit events and checkpoints, and
refuse moving a chain head backwards or deleting it. The one exception is the retention purge
(audit.services.audit_purge_expired), which sets the transaction-local setting
`rtp.audit_purge = on` (SET LOCAL semantics via set_config(..., true)); even then, the trigger
only lets a row go if it is past its tenant's retention by the database's clock and covered by a
purge checkpoint. `rtp.audit_allow_truncate = on` lets a *test database* be flushed between
tests (conftest sets it on the test database only).

SQLite has no session settings, so the purge opens its gate by inserting a row into
`audit_purge_gate` inside its transaction (other connections never see it uncommitted) and
deletes it before commit. The same checks apply; a `flush` row there plays the part of
`rtp.audit_allow_truncate` for the test database.

Neither stops someone who can drop a trigger: that is what the signed checkpoints are for.
"""

from django.db import migrations

PG_FORWARD = r"""
CREATE OR REPLACE FUNCTION audit_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    retention integer;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF current_setting('rtp.audit_allow_truncate', true) = 'on' THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION 'audit trail is append-only: TRUNCATE of % refused', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('rtp.audit_purge', true) = 'on' THEN
        IF NOT EXISTS (
            SELECT 1 FROM audit_auditcheckpoint c
            WHERE c.chain = OLD.chain AND c.kind = 'purge' AND c.seq >= OLD.seq
        ) THEN
            RAISE EXCEPTION 'audit purge refused: %#% is not covered by a purge checkpoint', OLD.chain, OLD.seq
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.tenant_id IS NOT NULL THEN
            SELECT audit_retention_days INTO retention FROM tenants_tenant WHERE id = OLD.tenant_id;
            IF retention IS NULL OR OLD.created_at >= now() - make_interval(days => retention) THEN
                RAISE EXCEPTION 'audit purge refused: %#% is still within its retention', OLD.chain, OLD.seq
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
        END IF;
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE FUNCTION audit_append_only_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_setting('rtp.audit_allow_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF current_setting('rtp.audit_allow_truncate', true) = 'on' THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'UPDATE' AND NEW.chain = OLD.chain AND NEW.seq >= OLD.seq
            AND NEW.tenant_id IS NOT DISTINCT FROM OLD.tenant_id THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit chain heads only move forward: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_event_guard();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_guard();
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION audit_append_only_guard();
CREATE TRIGGER audit_checkpoint_no_truncate BEFORE TRUNCATE ON audit_auditcheckpoint
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only_guard();
CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_auditchainhead
    FOR EACH ROW EXECUTE FUNCTION audit_head_guard();
CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_auditchainhead
    FOR EACH STATEMENT EXECUTE FUNCTION audit_head_guard();
"""

PG_REVERSE = r"""
DROP TRIGGER IF EXISTS audit_event_append_only ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_auditcheckpoint;
DROP TRIGGER IF EXISTS audit_checkpoint_no_truncate ON audit_auditcheckpoint;
DROP TRIGGER IF EXISTS audit_head_forward_only ON audit_auditchainhead;
DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_auditchainhead;
DROP FUNCTION IF EXISTS audit_event_guard();
DROP FUNCTION IF EXISTS audit_append_only_guard();
DROP FUNCTION IF EXISTS audit_head_guard();
"""

SQLITE_FORWARD = [
    "CREATE TABLE IF NOT EXISTS audit_purge_gate (kind TEXT NOT NULL)",
    """CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_auditevent
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditevent refused'); END""",
    """CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_auditevent
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
        AND (
            NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'purge')
            OR NOT EXISTS (
                SELECT 1 FROM audit_auditcheckpoint c
                WHERE c.chain = OLD.chain AND c.kind = 'purge' AND c.seq >= OLD.seq
            )
            OR (OLD.tenant_id IS NOT NULL AND julianday(OLD.created_at) >= julianday('now') - (
                SELECT audit_retention_days FROM tenants_tenant WHERE id = OLD.tenant_id
            ))
        )
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on audit_auditevent refused'); END""",
    """CREATE TRIGGER audit_checkpoint_no_update BEFORE UPDATE ON audit_auditcheckpoint
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE on audit_auditcheckpoint refused'); END""",
    """CREATE TRIGGER audit_checkpoint_no_delete BEFORE DELETE ON audit_auditcheckpoint
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
       BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE on audit_auditcheckpoint refused'); END""",
    """CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_auditchainhead
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
        AND (NEW.seq < OLD.seq OR NEW.chain != OLD.chain OR NEW.tenant_id IS NOT OLD.tenant_id)
       BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward'); END""",
    """CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_auditchainhead
       WHEN NOT EXISTS (SELECT 1 FROM audit_purge_gate WHERE kind = 'flush')
       BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward'); END""",
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS audit_event_no_update",
    "DROP TRIGGER IF EXISTS audit_event_no_delete",
    "DROP TRIGGER IF EXISTS audit_checkpoint_no_update",
    "DROP TRIGGER IF EXISTS audit_checkpoint_no_delete",
    "DROP TRIGGER IF EXISTS audit_head_forward_only",
    "DROP TRIGGER IF EXISTS audit_head_no_delete",
    "DROP TABLE IF EXISTS audit_purge_gate",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement, params=None)


def reverse(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_REVERSE, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_checkpoints_canonical_details_viewer_indexes"),
        ("tenants", "0001_initial"),
    ]

    operations = [migrations.RunPython(forward, reverse)]
