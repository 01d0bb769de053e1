"""Exports of a tenant's audit trail: CSV and JSON Lines streamed in constant memory, a PDF
summary report, and a one-line way to serve any of them from a Django view.

Every CSV/JSONL export is framed so it can be verified offline later (`manage.py verify_audit
--export FILE`):

- first line, the manifest: filter, row count, first and last seq, the chain head at export
  time, the signed checkpoints the rows can be checked against, the `export.created` event that
  records this export, all signed (HMAC-SHA256, audit signing key);
- then the rows, in seq order, each with its `prev_hash` and `hash`;
- last line, the trailer: the SHA-256 of every byte between manifest and trailer and the row
  count actually written, signed together with the manifest's signature.

CSV: the manifest and trailer are CSV records whose first field is `#rtp-audit-manifest` /
`#rtp-audit-trailer` (readers such as pandas skip them with `comment="#"`); text cells that a
spreadsheet would run as a formula (starting with = + - @ tab CR or ') get a leading `'`, which
the verifier removes. JSON Lines: `{"manifest": …}`, one object per row, `{"trailer": …}`.

On PostgreSQL rows are produced by `COPY (SELECT …) TO STDOUT` and forwarded as they come; on
SQLite they are formatted in Python. Every export, PDF included, is itself audited
(`export.created`) before its first byte is produced.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.db.models import Count, Max, Min
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone

from audit import signing
from audit.actors import Actor
from audit.chain import ENCODING_VERSION, canonical_json, canonical_timestamp, chain_for
from audit.models import AuditChainHead, AuditCheckpoint, AuditEvent
from audit.selectors import AuditFilter, SeqRange, audit_event_queryset, audit_seq_range, audit_summary
from audit.services import audit_record
from audit.verification import ChainReport, audit_verify_chain
from realtime_platform.errors import BadRequest

if TYPE_CHECKING:
    from tenants.models import Tenant

logger = logging.getLogger(__name__)

FORMATS = ("csv", "jsonl", "pdf")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl", "pdf": "application/pdf"}
COLUMNS = (
    "seq",
    "created_at",
    "chain",
    "tenant_id",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "ip",
    "details",
    "prev_hash",
    "hash",
)
# Text columns a spreadsheet could take for a formula.
FORMULA_GUARDED = frozenset(
    {"actor_type", "actor_id", "actor_label", "action", "target_type", "target_id", "request_id"}
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
MANIFEST_MARK = "#rtp-audit-manifest"
TRAILER_MARK = "#rtp-audit-trailer"
CHUNK_BYTES = 256 * 1024


def guard_formula(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def unguard_formula(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def checkpoint_as_dict(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "chain": checkpoint.chain,
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "created_at": canonical_timestamp(checkpoint.created_at),
        "kind": checkpoint.kind,
        "key_id": checkpoint.key_id,
        "prev_signature": checkpoint.prev_signature,
        "signature": checkpoint.signature,
    }


def _sign(document: dict[str, Any]) -> dict[str, Any]:
    key_id, signature = signing.sign(
        signing.document_message({**document, "key_id": signing.current_key_id()})
    )
    return {**document, "key_id": key_id, "signature": signature}


@dataclass
class AuditExport:
    """An export whose `export.created` event is recorded; `chunks()` produces its bytes once."""

    tenant: Tenant
    fmt: str
    filters: AuditFilter
    seq_range: SeqRange | None
    manifest: dict[str, Any]
    event: AuditEvent
    filename: str
    content_type: str
    trailer: dict[str, Any] | None = None

    def chunks(self) -> Iterator[bytes]:
        return _stream(self)


def audit_export_start(
    *, tenant: Tenant, actor: Actor, fmt: str, filters: AuditFilter | None = None
) -> AuditExport:
    """Snapshot the selection (rows up to the chain head as it is now), record `export.created`
    and return the export, ready to stream. Only rows that existed before the export was
    recorded are in it; its own event is not."""
    if fmt not in ("csv", "jsonl"):
        raise BadRequest("format must be csv or jsonl (or pdf for the summary report).", param="format")
    filters = filters or AuditFilter()
    chain = chain_for(tenant.pk)
    head = AuditChainHead.objects.filter(chain=chain).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, "")
    seq_range = audit_seq_range(tenant=tenant, filters=filters, up_to=head_seq) if head_seq else None
    span: dict[str, Any] = {"n": 0, "first": None, "last": None}
    if seq_range is not None:
        span = audit_event_queryset(tenant=tenant, filters=filters, seq_range=seq_range).aggregate(
            n=Count("id"), first=Min("seq"), last=Max("seq")
        )
    generated_at = timezone.now()
    event = audit_record(
        tenant=tenant,
        actor=actor,
        action="export.created",
        target_type="audit.export",
        target_id=fmt,
        details={
            "format": fmt,
            "filter": filters.as_dict(),
            "row_count": span["n"],
            "first_seq": span["first"],
            "last_seq": span["last"],
            "chain_head": {"seq": head_seq, "hash": head_hash},
        },
    )
    checkpoints = []
    if span["last"] is not None:
        latest = (
            AuditCheckpoint.objects.filter(chain=chain, seq__lte=span["last"], seq__gte=span["first"])
            .order_by("-seq", "-id")
            .first()
        )
        boundary = AuditCheckpoint.objects.filter(chain=chain, seq=span["first"] - 1, kind="purge").first()
        checkpoints = [checkpoint_as_dict(c) for c in (boundary, latest) if c is not None]
    manifest = _sign(
        {
            "type": "rtp-audit-export",
            "version": 1,
            "format": fmt,
            "hash_encoding": ENCODING_VERSION,
            "tenant": {"id": tenant.pk, "slug": tenant.slug},
            "chain": chain,
            "filter": filters.as_dict(),
            "contiguous": filters.is_range_only,
            "row_count": span["n"],
            "first_seq": span["first"],
            "last_seq": span["last"],
            "chain_head": {"seq": head_seq, "hash": head_hash},
            "checkpoints": checkpoints,
            "generated_at": canonical_timestamp(generated_at),
            "generated_by": {"type": actor.kind, "id": actor.id, "label": actor.label},
            "export_event": {"seq": event.seq, "hash": event.hash},
            "columns": list(COLUMNS),
        }
    )
    stamp = generated_at.strftime("%Y%m%dT%H%M%SZ")
    logger.info("audit export started tenant=%s format=%s rows=%s", tenant.pk, fmt, span["n"])
    return AuditExport(
        tenant=tenant,
        fmt=fmt,
        filters=filters,
        seq_range=SeqRange(span["first"], span["last"]) if span["first"] is not None else None,
        manifest=manifest,
        event=event,
        filename=f"audit-{tenant.slug}-{stamp}.{fmt}",
        content_type=CONTENT_TYPES[fmt],
    )


# --- Streaming --------------------------------------------------------------------------------


def _manifest_line(export: AuditExport) -> bytes:
    if export.fmt == "csv":
        return _csv_line([MANIFEST_MARK, orjson.dumps(export.manifest).decode()])
    return orjson.dumps({"manifest": export.manifest}) + b"\n"


def _trailer_line(export: AuditExport, trailer: dict[str, Any]) -> bytes:
    if export.fmt == "csv":
        return _csv_line([TRAILER_MARK, orjson.dumps(trailer).decode()])
    return orjson.dumps({"trailer": trailer}) + b"\n"


def _csv_line(values: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def _stream(export: AuditExport) -> Iterator[bytes]:
    """Manifest, rows, trailer; chunks of about CHUNK_BYTES."""
    yield _manifest_line(export)
    digest = hashlib.sha256()
    counter = [0]
    pending = bytearray()
    if export.fmt == "csv":
        header = _csv_line(list(COLUMNS))
        digest.update(header)
        pending += header
    if export.seq_range is not None:
        source = _pg_rows if connection.vendor == "postgresql" else _python_rows
        for piece in source(export, counter):
            digest.update(piece)
            pending += piece
            if len(pending) >= CHUNK_BYTES:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)
    trailer = _sign(
        {
            "row_count": counter[0],
            "rows_sha256": digest.hexdigest(),
            "manifest_signature": export.manifest["signature"],
        }
    )
    export.trailer = trailer
    logger.info("audit export finished tenant=%s format=%s rows=%s", export.tenant.pk, export.fmt, counter[0])
    yield _trailer_line(export, trailer)


_PG_EXPORT_COLUMNS = {
    "seq": "seq",
    "created_at": """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
    "chain": "chain",
    "tenant_id": "tenant_id",
    "actor_type": "actor_type",
    "actor_id": "actor_id",
    "actor_label": "actor_label",
    "action": "action",
    "target_type": "target_type",
    "target_id": "target_id",
    "request_id": "request_id",
    "ip": "host(ip)",
    "details": "details",
    "prev_hash": "prev_hash",
    "hash": "hash",
}


def _pg_guard(column: str) -> str:
    return (
        f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r', '''') "
        f"THEN '''' || {column} ELSE {column} END"
    )


def export_select_sql(export: AuditExport) -> tuple[Any, str]:
    """(psycopg SQL composable, plain SQL) of the SELECT whose rows an export carries, for COPY
    and for the benchmark's baseline."""
    from psycopg import sql

    assert export.seq_range is not None
    filters = export.filters
    conditions = [
        sql.SQL("chain = {}").format(sql.Literal(chain_for(export.tenant.pk))),
        sql.SQL("seq >= {}").format(sql.Literal(export.seq_range.low)),
        sql.SQL("seq <= {}").format(sql.Literal(export.seq_range.high)),
    ]
    for name, column in (
        ("actor", "actor_label"),
        ("actor_type", "actor_type"),
        ("action", "action"),
        ("target_type", "target_type"),
        ("target_id", "target_id"),
        ("request_id", "request_id"),
    ):
        value = getattr(filters, name)
        if value:
            conditions.append(sql.SQL(column + " = {}").format(sql.Literal(value)))
    if export.fmt == "csv":
        columns = ", ".join(
            _pg_guard(expr) if name in FORMULA_GUARDED else expr for name, expr in _PG_EXPORT_COLUMNS.items()
        )
    else:
        pairs = ", ".join(
            f"'{name}', {'details::json' if name == 'details' else expr}"
            for name, expr in _PG_EXPORT_COLUMNS.items()
        )
        columns = f"json_build_object({pairs})::text"
    # `columns` is built from the constants above only; every value is a sql.Literal.
    query = sql.SQL("SELECT " + columns + " FROM audit_auditevent WHERE {} ORDER BY seq").format(  # noqa: S608
        sql.SQL(" AND ").join(conditions)
    )
    connection.ensure_connection()
    return query, query.as_string(connection.connection)


def _pg_rows(export: AuditExport, counter: list[int]) -> Iterator[bytes]:
    from psycopg import sql

    select, _ = export_select_sql(export)
    if export.fmt == "csv":
        options = sql.SQL("(FORMAT csv)")
    else:
        # CSV mode with a quote and delimiter that never occur in JSON text: each row comes out
        # as its JSON, unquoted and unescaped.
        options = sql.SQL("(FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')")
    query = sql.SQL("COPY ({}) TO STDOUT {}").format(select, options)
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        with cursor.copy(query) as copy:
            for data in copy:
                yield bytes(data)
        counter[0] = max(cursor.rowcount, 0)


def _python_rows(export: AuditExport, counter: list[int]) -> Iterator[bytes]:
    assert export.seq_range is not None
    rows = (
        audit_event_queryset(tenant=export.tenant, filters=export.filters, seq_range=export.seq_range)
        .order_by("seq")
        .values_list(*COLUMNS)
        .iterator(chunk_size=500)
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for values in rows:
        record = dict(zip(COLUMNS, values, strict=True))
        record["created_at"] = canonical_timestamp(record["created_at"])
        record["details"] = canonical_json(record["details"])
        counter[0] += 1
        if export.fmt == "csv":
            writer.writerow(
                [guard_formula(record[c]) if c in FORMULA_GUARDED else record[c] for c in COLUMNS]
            )
            if buffer.tell() >= CHUNK_BYTES // 4:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        else:
            record["details"] = orjson.Fragment(record["details"])
            yield orjson.dumps(record) + b"\n"
    if buffer.tell():
        yield buffer.getvalue().encode()


def audit_export_write(
    export: AuditExport, out: Any, *, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Write the whole export to a binary file object; `progress(n)` is told of about n more rows
    at a time. Returns the trailer."""
    for chunk in export.chunks():
        out.write(chunk)
        if progress is not None:
            progress(chunk.count(b"\n"))
    assert export.trailer is not None
    return export.trailer


# --- Django responses -------------------------------------------------------------------------


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Serve a synchronous chunk generator to an ASGI server one chunk at a time (Django would
    otherwise read a synchronous iterator to the end before sending a byte). Every step runs in
    the request's thread, so the database connection and its COPY stay with it."""
    step = sync_to_async(_next_chunk, thread_sensitive=True)
    try:
        while True:
            chunk = await step(chunks)
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=True)()


def audit_export_response(
    *, request: HttpRequest, tenant: Tenant, actor: Actor, fmt: str, filters: AuditFilter | None = None
) -> HttpResponse | StreamingHttpResponse:
    """A download of the tenant's audit trail in `fmt` (csv, jsonl or pdf), audited, streamed
    in constant memory (csv, jsonl) under WSGI and ASGI alike. The console view is one line:
    `return audit_export_response(request=request, tenant=t, actor=a, fmt=f, filters=flt)`."""
    if fmt == "pdf":
        report = audit_report_pdf(tenant=tenant, actor=actor, filters=filters or AuditFilter())
        response = HttpResponse(report.pdf, content_type=CONTENT_TYPES["pdf"])
        response["Content-Disposition"] = f'attachment; filename="{report.filename}"'
        response["Cache-Control"] = "no-store"
        return response
    export = audit_export_start(tenant=tenant, actor=actor, fmt=fmt, filters=filters)
    chunks = export.chunks()
    streaming = StreamingHttpResponse(
        _in_thread(chunks) if isinstance(request, ASGIRequest) else chunks, content_type=export.content_type
    )
    streaming["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    streaming["Cache-Control"] = "no-store"
    streaming["X-Audit-Export-Event"] = str(export.event.seq)
    return streaming


# --- PDF summary report -----------------------------------------------------------------------


@dataclass(frozen=True)
class AuditReport:
    pdf: bytes
    filename: str
    event: AuditEvent
    verification: ChainReport
    total: int


def _latin1(text: str) -> str:
    """The report uses the PDF core fonts (no font files to ship), which cover Latin-1: other
    characters are transliterated where Unicode allows, else shown as '?'."""
    out = []
    for char in str(text):
        if ord(char) < 256:
            out.append(char)
            continue
        base = "".join(
            part
            for part in unicodedata.normalize("NFKD", char)
            if ord(part) < 256 and not unicodedata.combining(part)
        )
        out.append(base or "?")
    return "".join(out)


def _short(value: Any, limit: int) -> str:
    text = _latin1(value if isinstance(value, str) else orjson.dumps(value).decode())
    return text if len(text) <= limit else text[: limit - 1] + "~"


def audit_report_pdf(*, tenant: Tenant, actor: Actor, filters: AuditFilter) -> AuditReport:
    """A PDF summary of the tenant's trail for a period (and any other filter): counts by action
    and by actor, notable events (refusals, failures, policy, quota, key and member changes,
    exports, purges), and the result of verifying the whole chain now. Audited as an export."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    verification = audit_verify_chain(chain=chain_for(tenant.pk))
    summary = audit_summary(tenant=tenant, filters=filters)
    generated_at = timezone.now()
    event = audit_record(
        tenant=tenant,
        actor=actor,
        action="export.created",
        target_type="audit.export",
        target_id="pdf",
        details={
            "format": "pdf",
            "filter": filters.as_dict(),
            "row_count": summary.total,
            "first_seq": summary.first_seq,
            "last_seq": summary.last_seq,
            "chain_verified": verification.ok,
        },
    )

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(_latin1(f"Audit report - {tenant.name}"))
    pdf.set_author("Realtime Platform")
    pdf.set_creation_date(generated_at)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 7, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", size=9)

    def line(text: str) -> None:
        pdf.multi_cell(0, 5, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def when(value: datetime | None) -> str:
        return canonical_timestamp(value) if value is not None else "-"

    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(
        0, 10, _latin1(f"Audit report: {tenant.name} ({tenant.slug})"), new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    pdf.set_font("Helvetica", size=9)
    line(
        f"Period: {when(filters.since) if filters.since else 'beginning'} to "
        f"{when(filters.until) if filters.until else 'now'} (UTC; until is exclusive)"
    )
    line(f"Selection: {filters.describe()}")
    line(
        f"Generated {canonical_timestamp(generated_at)} by {actor.kind} {actor.label}; "
        f"recorded as audit event #{event.seq} (export.created)."
    )

    heading("Chain verification")
    if verification.ok:
        line(
            f"Chain verification: OK. {verification.rows:,} rows verified "
            f"(seq {verification.first_seq}..{verification.last_seq}), head seq {verification.head_seq}, "
            f"hash {verification.head_hash}, {verification.checkpoints} signed checkpoint(s), "
            f"anchored at {verification.anchor}."
        )
    else:
        assert verification.problem is not None
        pdf.set_text_color(180, 0, 0)
        line(
            f"Chain verification: FAILED at seq {verification.problem.seq}: "
            f"{verification.problem.kind}: {verification.problem.message}"
        )
        pdf.set_text_color(0, 0, 0)
    for warning in verification.warnings:
        line(f"Warning: {warning}")

    heading("Summary")
    line(f"Events in period: {summary.total:,}")
    if summary.total:
        line(
            f"Sequence numbers: {summary.first_seq}..{summary.last_seq}; "
            f"first at {when(summary.first_at)}, last at {when(summary.last_at)}"
        )
    line(f"Notable events: {summary.notable_total:,}")

    heading("Events by action")
    with pdf.table(col_widths=(120, 40), text_align=("LEFT", "RIGHT"), first_row_as_headings=True) as table:
        table.row(["Action", "Events"])
        for action, count in summary.by_action:
            table.row([_short(action, 70), f"{count:,}"])

    heading("Events by actor")
    with pdf.table(col_widths=(30, 100, 30), text_align=("LEFT", "LEFT", "RIGHT")) as table:
        table.row(["Type", "Actor", "Events"])
        for actor_type, label, count in summary.by_actor[:100]:
            table.row([actor_type, _short(label, 60), f"{count:,}"])
    if len(summary.by_actor) > 100:
        line(f"... and {len(summary.by_actor) - 100:,} more actors.")

    heading("Notable events")
    if summary.notable:
        with pdf.table(col_widths=(14, 38, 34, 30, 74), text_align="LEFT") as table:
            table.row(["Seq", "Time (UTC)", "Action", "Actor", "Target and details"])
            for item in summary.notable:
                table.row(
                    [
                        str(item.seq),
                        canonical_timestamp(item.created_at)[:19].replace("T", " "),
                        _short(item.action, 30),
                        _short(item.actor_label, 24),
                        _short(f"{item.target_type} {item.target_id} {canonical_json(item.details)}", 160),
                    ]
                )
        if summary.notable_total > len(summary.notable):
            line(
                f"Showing the {len(summary.notable)} most recent of {summary.notable_total:,} notable events."
            )
    else:
        line("None in this period.")

    heading("How to check this trail")
    line(
        "Each audit row commits to the row before it (SHA-256, encoding rtp-audit-v1), and the platform "
        "signs checkpoints of every chain head. Export the same period as CSV or JSON Lines from the "
        "console or with `manage.py export_audit`, and check it with `manage.py verify_audit --export FILE`."
    )
    stamp = generated_at.strftime("%Y%m%dT%H%M%SZ")
    return AuditReport(
        pdf=bytes(pdf.output()),
        filename=f"audit-report-{tenant.slug}-{stamp}.pdf",
        event=event,
        verification=verification,
        total=summary.total,
    )
