"""Is a chain exactly what was recorded? Walks every row in seq order, re-hashes it, checks that it
links to the row before, and checks the chain against its head and its signed checkpoints.

The walk stops at the first inconsistency, then looks at the rows around it to say what happened:

- altered:    a row's content no longer matches its hash (or a row was changed and re-hashed,
              which breaks the next row's link)
- deleted:    a seq is missing (rows gone from the middle or the end, or the later rows
              renumbered to close the gap)
- inserted:   a row that is not part of the chain (extra rows, or a row slipped in with the rest
              renumbered)
- reordered:  rows that swapped places
- rewritten:  rows consistent among themselves but not with a signed checkpoint (the chain was
              recomputed from some point on)
- checkpoint: a checkpoint whose signature, or link to the checkpoint before it, is wrong

The reported seq is the first bad one, exactly; for `rewritten` it is the checkpoint's seq, the
first place where the rewrite is provable (the message gives the range it lies in).

On PostgreSQL the rows come as a binary COPY stream whose tuples are, byte for byte, the hash
encoding of `audit.chain`, so each row is hashed without being parsed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import DatabaseError, connection, transaction

from audit import signing
from audit.chain import (
    GENESIS_HASH,
    HASH,
    HASHED_FIELDS,
    PREV_HASH,
    SEQ,
    VERSION_PREFIX,
    as_aware_datetime,
    canonical_timestamp,
    chain_for,
    field_payloads,
    hash_payloads,
    payload_int,
    split_wire_row,
    wire_row,
)
from audit.models import AuditChainHead, AuditCheckpoint

logger = logging.getLogger(__name__)

DIAGNOSIS_WINDOW = 5_000
BATCH = 10_000
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"
_COPY_ROWS = """
COPY (
    SELECT prev_hash, seq, chain, tenant_id, created_at, actor_type, actor_id, actor_label, action,
           target_type, target_id, request_id, ip, details, hash
    FROM audit_auditevent
    WHERE chain = {chain} AND seq >= {low} AND seq <= {high}
    ORDER BY seq
) TO STDOUT (FORMAT binary)
"""
_ORM_FIELDS = HASHED_FIELDS  # the ORM fallback reads rows in the encoding's order


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: str
    message: str


@dataclass(frozen=True)
class ChainReport:
    chain: str
    ok: bool
    rows: int
    first_seq: int | None
    last_seq: int | None
    head_seq: int
    head_hash: str
    checkpoints: int
    anchor: str
    problem: ChainProblem | None
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.problem is not None:
            problem = self.problem
            return f"BROKEN {self.chain} at seq {problem.seq}: {problem.kind}: {problem.message}"
        span = f"seq {self.first_seq}..{self.last_seq}" if self.rows else "no rows"
        return (
            f"OK {self.chain}: {self.rows:,} rows ({span}), head {self.head_seq} {self.head_hash[:16]}…, "
            f"{self.checkpoints} signed checkpoint(s), anchored at {self.anchor}"
        )


# --- Row sources: each yields rows in binary COPY tuple layout (see audit.chain.wire_row) ------


def _pg_rows(chain: str, low: int, high: int) -> Iterator[list[bytes]]:
    """The rows through libpq's COPY interface directly (psycopg's `pq` layer): the verifier's
    hot loop spends most of its time here, and this skips a generator and a wait per row.
    Stopped early, it reads the stream to its end, as psycopg's own COPY does, so the
    connection and its transaction stay usable."""
    from psycopg import pq, sql

    connection.ensure_connection()
    raw = connection.connection
    pgconn = raw.pgconn
    query = sql.SQL(_COPY_ROWS).format(chain=sql.Literal(chain), low=sql.Literal(low), high=sql.Literal(high))
    with raw.lock:
        pgconn.send_query(query.as_bytes(raw))
        while pgconn.flush():
            select.select([], [pgconn.socket], [])
        started = pgconn.get_result()
        if started is None or started.status != pq.ExecStatus.COPY_OUT:
            message = started.error_message.decode(errors="replace") if started is not None else ""
            while pgconn.get_result() is not None:
                pass
            raise DatabaseError(f"audit verification query failed: {message}")
        ended = False
        try:
            get = pgconn.get_copy_data
            batch: list[bytes] = []
            append = batch.append
            while True:
                size, data = get(0)  # blocks until a row (one CopyData message) is in
                if size < 0:
                    break
                append(bytes(data))
                if len(batch) >= BATCH:
                    yield _strip_copy_framing(batch)
                    batch = []
                    append = batch.append
            ended = True
            yield _strip_copy_framing(batch)
        finally:
            if not ended:
                while get(0)[0] >= 0:
                    pass
            failure = ""
            while (result := pgconn.get_result()) is not None:
                if result.status != pq.ExecStatus.COMMAND_OK:
                    failure = result.error_message.decode(errors="replace")
            if failure and ended:
                raise DatabaseError(f"audit verification query failed: {failure}")


def _strip_copy_framing(batch: list[bytes]) -> list[bytes]:
    # The first message carries the file header before the first row, the last one is the trailer.
    if batch and batch[0].startswith(_COPY_HEADER):
        # signature (11 bytes), flags (4), header extension length (4), extension
        first = batch[0][19 + int.from_bytes(batch[0][15:19], "big") :]
        batch = [first, *batch[1:]] if first else batch[1:]
    if batch and batch[-1] == b"\xff\xff":
        batch.pop()
    return batch


def chain_rows(chain: str, low: int = 0, high: int = 2**62) -> Iterator[list[bytes]]:
    """Rows of `chain` with low <= seq <= high, in seq order, in batches of binary COPY tuples."""
    if connection.vendor == "postgresql":
        return _pg_rows(chain, low, high)
    return _sqlite_rows(chain, low, high)


def _sqlite_rows(chain: str, low: int, high: int) -> Iterator[list[bytes]]:
    columns = ", ".join(_ORM_FIELDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns}, hash FROM audit_auditevent "  # noqa: S608
            "WHERE chain = %s AND seq >= %s AND seq <= %s ORDER BY seq",
            [chain, low, high],
        )
        while rows := cursor.fetchmany(5_000):
            batch = []
            for values in rows:
                fields = dict(zip(_ORM_FIELDS, values[:-1], strict=True))
                fields["created_at"] = as_aware_datetime(fields["created_at"])
                batch.append(wire_row(field_payloads(fields), values[-1]))
            yield batch


# --- Diagnosis --------------------------------------------------------------------------------

Payloads = list[bytes | None]


def _stored_hash(row: Payloads) -> str:
    return (row[HASH] or b"").decode(errors="replace")


def _seq(row: Payloads) -> int:
    value = payload_int(row[SEQ])
    return -1 if value is None else value


def diagnose(
    *,
    row: Payloads,
    expected: int,
    prev_hash: str,
    has_prev_row: bool,
    following: Callable[[], list[Payloads]],
) -> ChainProblem:
    """Why `row` (the first that does not fit) does not fit, given that every row before it did.
    `following()` returns the rows after it (a window), fetched only when needed."""
    seq = _seq(row)
    if seq > expected:
        if any(_seq(other) == expected for other in following()):
            # Only possible in an export file, where rows carry their seq when moved.
            return ChainProblem(expected, "reordered", f"row {expected} comes later, after row {seq}")
        gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
        return ChainProblem(expected, "deleted", f"row(s) {gap} missing")
    if seq < expected:
        return ChainProblem(seq, "inserted", f"a second row with seq {seq}")
    stored = _stored_hash(row)
    window = following()
    nxt = window[0] if window and _seq(window[0]) == seq + 1 else None
    nxt_is_original_here = nxt is not None and hash_payloads(nxt, seq=seq) == _stored_hash(nxt)
    nxt_links_back = nxt is not None and (nxt[PREV_HASH] or b"").decode(errors="replace") == prev_hash
    if hash_payloads(row) != stored:
        if has_prev_row and hash_payloads(row, seq=seq - 1) == stored:
            return ChainProblem(
                seq - 1,
                "inserted",
                f"row {seq - 1} is not part of the chain: row {seq} is the original row {seq - 1}, "
                "renumbered to make room",
            )
        if hash_payloads(row, seq=seq + 1) == stored:
            if nxt_is_original_here:
                return ChainProblem(seq, "reordered", f"rows {seq} and {seq + 1} swapped places")
            return ChainProblem(
                seq, "deleted", f"row {seq} was deleted and the rows after it renumbered to close the gap"
            )
        if nxt_is_original_here and nxt_links_back:
            return ChainProblem(
                seq, "inserted", f"row {seq} is not part of the chain (the rows after it were renumbered)"
            )
        for other in window:
            if hash_payloads(row, seq=_seq(other)) == stored:
                return ChainProblem(
                    seq, "reordered", f"row {seq} holds the original row {_seq(other)} (rows moved)"
                )
        return ChainProblem(seq, "altered", f"row {seq}'s content does not match its hash")
    # Consistent with its own hash, but not linked to the row before it.
    if nxt_is_original_here and nxt_links_back:
        return ChainProblem(
            seq, "inserted", f"row {seq} is not part of the chain (the rows after it were renumbered)"
        )
    if has_prev_row and (nxt is None or (nxt[PREV_HASH] or b"").decode(errors="replace") == stored):
        return ChainProblem(
            seq - 1,
            "altered",
            f"row {seq - 1} was altered and its hash recomputed: row {seq} still links to the original",
        )
    return ChainProblem(seq, "altered", f"row {seq} was rewritten: it does not link to row {seq - 1}")


# --- Checkpoints ------------------------------------------------------------------------------


def checkpoint_problems(
    checkpoints: list[AuditCheckpoint], *, linked: bool = True
) -> tuple[list[ChainProblem], list[str], list[AuditCheckpoint]]:
    """Signatures and (when `linked`: all of a chain's, oldest first) linkage of checkpoints:
    (problems, warnings, the checkpoints whose signature is genuine, the only ones trusted)."""
    problems: list[ChainProblem] = []
    warnings: list[str] = []
    trusted: list[AuditCheckpoint] = []
    previous = ""
    for checkpoint in checkpoints:
        message = signing.checkpoint_message(
            chain=checkpoint.chain,
            seq=checkpoint.seq,
            hash=checkpoint.hash,
            created_at=canonical_timestamp(checkpoint.created_at),
            kind=checkpoint.kind,
            prev_signature=checkpoint.prev_signature,
        )
        genuine = signing.verify(message, key_id=checkpoint.key_id, signature=checkpoint.signature)
        if genuine:
            trusted.append(checkpoint)
        elif genuine is None:
            warnings.append(
                f"the checkpoint of seq {checkpoint.seq} was signed with key {checkpoint.key_id}, "
                "which this deploy does not have: not checked"
            )
        elif not genuine:
            problems.append(
                ChainProblem(
                    checkpoint.seq,
                    "checkpoint",
                    f"the checkpoint of seq {checkpoint.seq}: its signature is not genuine",
                )
            )
        if linked and checkpoint.prev_signature != previous:
            problems.append(
                ChainProblem(
                    checkpoint.seq,
                    "checkpoint",
                    f"the checkpoint of seq {checkpoint.seq} does not follow the one before it "
                    "(a checkpoint was removed or altered)",
                )
            )
        previous = checkpoint.signature
    return sorted(problems, key=lambda p: p.seq), warnings, trusted


# --- The walk ---------------------------------------------------------------------------------


@dataclass
class _Walk:
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    anchor: str = "genesis"
    problem: ChainProblem | None = None


def walk(
    chain: str, checkpoints: list[AuditCheckpoint], batches: Iterator[list[bytes]], *, partial: bool = False
) -> _Walk:
    """One pass over `batches` (binary COPY tuples in seq order). `partial`: the rows are a
    stretch of the chain (an export of a period), which may start anywhere."""
    purges = sorted(c.seq for c in checkpoints if c.kind == AuditCheckpoint.Kind.PURGE)
    signed: dict[int, list[AuditCheckpoint]] = {}
    for checkpoint in checkpoints:
        signed.setdefault(checkpoint.seq, []).append(checkpoint)
    result = _Walk()
    batches = iter(batches)
    first_batch = next((batch for batch in batches if batch), None)
    if first_batch is None:
        return result
    first_fields = split_wire_row(first_batch[0])
    start = _seq(first_fields)
    result.first_seq = start
    prev = GENESIS_HASH.encode()
    if start != 1:
        if start - 1 in purges:
            prev = signed[start - 1][0].hash.encode()
            result.anchor = f"purge checkpoint at seq {start - 1}"
        elif purges and purges[-1] >= start:
            # A purge stopped halfway: the rows left below its boundary must chain up to the
            # signed boundary hash, which the walk checks when it gets there.
            prev = first_fields[PREV_HASH] or b""
            result.anchor = f"purge checkpoint at seq {purges[-1]} (partly purged)"
        elif partial:
            prev = first_fields[PREV_HASH] or b""
            result.anchor = f"the first row of the stretch (seq {start})"
        else:
            gap = "1" if start == 2 else f"1..{start - 1}"
            result.problem = ChainProblem(
                1, "deleted", f"row(s) {gap} missing, and no retention purge covers them"
            )
            return result

    copy_prefix = hashlib.sha256(VERSION_PREFIX).copy
    expected = start
    for batch in itertools.chain([first_batch], batches):
        for position, row in enumerate(batch):
            # Layout: int16 count | len 64 | prev_hash | len 8 | seq | ... | len 64 | hash.
            digest = copy_prefix()
            digest.update(row[2:-68])
            if (
                row[6:70] != prev
                or digest.hexdigest().encode() != row[-64:]
                or int.from_bytes(row[74:82], "big", signed=True) != expected
            ):
                result.rows += position
                result.last_seq = expected - 1 if expected > start else None
                result.problem = _diagnose_at(
                    row, batch[position + 1 :], batches, expected, prev, has_prev_row=expected > start
                )
                return result
            if expected in signed:
                problem = _against_checkpoints(expected, row[-64:].decode(), signed, checkpoints)
                if problem is not None:
                    result.rows += position
                    result.last_seq = expected - 1 if expected > start else None
                    result.problem = problem
                    return result
            prev = row[-64:]
            expected += 1
        result.rows += len(batch)
    result.last_seq = expected - 1
    result.last_hash = prev.decode(errors="replace")
    return result


def _diagnose_at(
    row: bytes,
    rest_of_batch: list[bytes],
    batches: Iterator[list[bytes]],
    expected: int,
    prev: bytes,
    *,
    has_prev_row: bool,
) -> ChainProblem:
    lookahead = rest_of_batch[:DIAGNOSIS_WINDOW]
    for batch in batches:
        if len(lookahead) >= DIAGNOSIS_WINDOW:
            break
        lookahead.extend(batch[: DIAGNOSIS_WINDOW - len(lookahead)])
    fields = split_wire_row(row)
    return diagnose(
        row=fields,
        expected=expected,
        prev_hash=prev.decode(errors="replace"),
        has_prev_row=has_prev_row,
        following=lambda: [split_wire_row(r) for r in lookahead],
    )


def _against_checkpoints(
    seq: int, stored: str, signed: dict[int, list[AuditCheckpoint]], checkpoints: list[AuditCheckpoint]
) -> ChainProblem | None:
    for checkpoint in signed[seq]:
        if checkpoint.hash != stored:
            earlier = [c.seq for c in checkpoints if c.seq < seq]
            since = max(earlier) + 1 if earlier else 1
            return ChainProblem(
                seq,
                "rewritten",
                f"row {seq} differs from the checkpoint signed at "
                f"{canonical_timestamp(checkpoint.created_at)}: the chain was recomputed "
                f"somewhere in seq {since}..{seq}",
            )
    return None


def audit_verify_chain(*, chain: str) -> ChainReport:
    """Verify one chain (see the module docstring). Read-only, safe while writers append."""
    started = time.perf_counter()
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            # One snapshot for the head, the checkpoints and the rows, however long the walk takes.
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        head = AuditChainHead.objects.filter(chain=chain).first()
        head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        checkpoints = list(AuditCheckpoint.objects.filter(chain=chain).order_by("id"))
        problems, warnings, trusted = checkpoint_problems(checkpoints)
        result = walk(chain, trusted, chain_rows(chain))
    problem = result.problem
    if problem is None:
        last_seq = result.last_seq or 0
        signed_max = max((c.seq for c in trusted), default=0)
        if last_seq < head_seq and not (result.rows == 0 and head_seq in {c.seq for c in trusted}):
            problem = ChainProblem(
                last_seq + 1,
                "deleted",
                f"row(s) {last_seq + 1}..{head_seq} missing: the chain head says it reached {head_seq}",
            )
        elif last_seq > head_seq:
            problem = ChainProblem(
                head_seq + 1, "inserted", f"row(s) {head_seq + 1}..{last_seq} were added past the chain head"
            )
        elif signed_max > max(last_seq, head_seq):
            problem = ChainProblem(
                last_seq + 1,
                "deleted",
                f"row(s) {last_seq + 1}..{signed_max} missing: a checkpoint signed seq {signed_max}",
            )
        elif result.last_hash is not None and result.last_hash != head_hash:
            problem = ChainProblem(head_seq, "altered", "the chain head's hash does not match its last row")
    if problems and (problem is None or problems[0].seq <= problem.seq):
        problem = problems[0]
    report = ChainReport(
        chain=chain,
        ok=problem is None,
        rows=result.rows,
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        head_seq=head_seq,
        head_hash=head_hash,
        checkpoints=len(checkpoints),
        anchor=result.anchor,
        problem=problem,
        seconds=time.perf_counter() - started,
        warnings=warnings,
    )
    if problem is not None:
        logger.error("audit chain broken chain=%s seq=%s kind=%s", chain, problem.seq, problem.kind)
    return report


def audit_verify_tenant(*, tenant_id: int) -> ChainReport:
    return audit_verify_chain(chain=chain_for(tenant_id))


def audit_verify_all() -> list[ChainReport]:
    chains = sorted(AuditChainHead.objects.values_list("chain", flat=True))
    return [audit_verify_chain(chain=chain) for chain in chains]


__all__ = [
    "ChainProblem",
    "ChainReport",
    "audit_verify_all",
    "audit_verify_chain",
    "audit_verify_tenant",
    "chain_rows",
    "diagnose",
    "walk",
]
