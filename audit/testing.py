"""Test support for the append-only audit tables."""

from __future__ import annotations

from typing import Any


def allow_test_database_flush(connection: Any) -> None:
    """Let the *test* database be emptied between transactional tests (pytest-django flushes
    with TRUNCATE on PostgreSQL and DELETE on SQLite, both of which the audit triggers refuse).

    PostgreSQL: `rtp.audit_allow_truncate = on` becomes the test database's default for new
    sessions, and is set on the current one. SQLite: a `flush` row in `audit_purge_gate`.
    UPDATE and DELETE of audit rows stay refused on PostgreSQL; a SQLite test that checks the
    triggers removes the `flush` row inside its own (rolled back) transaction.
    """
    name = connection.settings_dict["NAME"]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            if not str(name).startswith("test_"):
                raise RuntimeError(f"refusing to relax audit triggers outside a test database ({name})")
            cursor.execute(
                f"ALTER DATABASE {connection.ops.quote_name(name)} SET rtp.audit_allow_truncate = 'on'"
            )
            cursor.execute("SET rtp.audit_allow_truncate = 'on'")
        elif connection.vendor == "sqlite":
            cursor.execute("INSERT INTO audit_purge_gate (kind) VALUES ('flush')")
    if connection.vendor == "postgresql" and getattr(connection, "pool", None) is not None:
        # Pooled connections opened before the ALTER DATABASE would not see the new default.
        connection.close_pool()
