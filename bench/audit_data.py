"""Fast generation of valid audit chains for benchmarks and large tests.

Rows are encoded and hashed in Python exactly as the recorder would (audit.chain), and the
encoded rows are themselves binary COPY tuples, so PostgreSQL ingests them as they are (COPY FROM
STDIN, binary). No trigger refuses INSERT. PostgreSQL only.
"""

from __future__ import annotations

import hashlib
import random
import struct
from datetime import UTC, datetime, timedelta

from django.db import connection

from audit.chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    VERSION_PREFIX,
    as_aware_datetime,
    canonical_json,
    chain_for,
    inet_payload,
    timestamp_payload,
)

ACTIONS = [
    ("secret.issued", 40),
    ("session.opened", 15),
    ("session.ended", 15),
    ("secret.failed", 3),
    ("session.refused", 3),
    ("key.created", 2),
    ("key.revoked", 1),
    ("key.rotated", 1),
    ("policy.changed", 1),
    ("quota.changed", 1),
    ("member.added", 1),
    ("auth.login", 5),
    ("auth.login_failed", 1),
]
COLUMNS = (*HASHED_FIELDS, "hash")  # the verifier's row layout (audit/chain.py)
_len = struct.Struct(">i").pack
_int8 = struct.Struct(">q").pack


def _field(payload: bytes) -> bytes:
    return _len(len(payload)) + payload


def load_chain(
    *, tenant_id: int, rows: int, seed: int = 7, start: datetime | None = None, step_ms: int = 25
) -> int:
    """Append `rows` generated events to the tenant's chain (after whatever it holds already);
    returns the new head seq. Timestamps advance by `step_ms` per row from `start` (or from the
    chain's last row, whichever is later)."""
    rng = random.Random(seed)
    names, weights = zip(*ACTIONS, strict=True)
    chain = chain_for(tenant_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq, hash, created_at FROM audit_auditchainhead WHERE chain = %s", [chain])
        head = cursor.fetchone()
    seq, prev = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
    last_at = as_aware_datetime(head[2]) if head and head[2] is not None else None
    at = start or datetime(2020, 1, 1, tzinfo=UTC)
    if last_at is not None:
        at = max(at, last_at)
    step = timedelta(milliseconds=step_ms)
    sha256 = hashlib.sha256
    chain_field = _field(chain.encode())
    tenant_field = _field(_int8(tenant_id))
    target_type = _field(b"tokens.clientsecret")
    actions = [_field(a.encode()) for a in rng.choices(names, weights, k=rows)]
    count_prefix = struct.pack(">h", len(COLUMNS))
    connection.ensure_connection()
    cols = ", ".join(COLUMNS)
    buffer = bytearray(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
    with (
        connection.connection.cursor() as cursor,
        cursor.copy(f"COPY audit_auditevent ({cols}) FROM STDIN (FORMAT binary)") as copy,
    ):
        for i in range(rows):
            seq += 1
            at += step
            user = i % 7 == 0
            actor = rng.randint(1, 40)
            details = {
                "model": "gpt-realtime",
                "ttl_seconds": rng.choice((60, 120, 600)),
                "kind": rng.choice(("relay", "upstream")),
                "last_four": f"{rng.randint(0, 9999):04d}",
            }
            body = b"".join(
                (
                    _field(prev.encode()),
                    _field(_int8(seq)),
                    chain_field,
                    tenant_field,
                    _field(timestamp_payload(at)),
                    _field(b"user" if user else b"api_key"),
                    _field(str(actor).encode()),
                    _field(f"user{actor}".encode() if user else f"rtp_sk_K{actor:07d}".encode()),
                    actions[i],
                    target_type,
                    _field(str(rng.randint(1, 10**9)).encode()),
                    _field(f"req_{rng.getrandbits(128):032x}".encode()),
                    _field(inet_payload(f"10.{i % 200}.{(i // 200) % 250}.{i % 250 + 1}") or b""),
                    _field(canonical_json(details).encode()),
                )
            )
            prev = sha256(VERSION_PREFIX + body).hexdigest()
            buffer += count_prefix + body + _field(prev.encode())
            if len(buffer) > 1 << 20:
                copy.write(bytes(buffer))
                buffer.clear()
        buffer += b"\xff\xff"
        copy.write(bytes(buffer))
    with connection.cursor() as cursor:
        if head:
            cursor.execute(
                "UPDATE audit_auditchainhead SET seq = %s, hash = %s, created_at = %s WHERE chain = %s",
                [seq, prev, at, chain],
            )
        else:
            cursor.execute(
                "INSERT INTO audit_auditchainhead (chain, tenant_id, seq, hash, created_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                [chain, tenant_id, seq, prev, at],
            )
    return seq
