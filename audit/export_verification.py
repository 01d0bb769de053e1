"""Offline verification of an export file (`manage.py verify_audit --export FILE`): needs the
file and the audit signing key, not the database.

Checks, in order of the file: the manifest's signature; every row's hash against its content;
rows in strictly increasing seq order within the manifest's range; for a range-only export,
each row's link to the row before it, no gap, the first row anchored (genesis or the signed
purge boundary) and the rows at signed checkpoints matching them, the last row matching the
chain head when the export reached it; then the row count, and the trailer's digest of every
byte between manifest and trailer and its signature. Reports the first problem, with the seq
where it is.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from audit import signing
from audit.chain import canonical_json, field_payloads, hash_payloads, parse_timestamp, wire_row
from audit.exports import COLUMNS, FORMULA_GUARDED, MANIFEST_MARK, TRAILER_MARK, unguard_formula
from audit.models import AuditCheckpoint
from audit.verification import ChainProblem, checkpoint_problems, walk

BATCH = 5_000


@dataclass
class ExportReport:
    path: str
    ok: bool = False
    format: str | None = None
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    manifest: dict[str, Any] | None = None
    problem: ChainProblem | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.problem is not None:
            where = f" at seq {self.problem.seq}" if self.problem.seq > 0 else ""
            return f"BROKEN export {self.path}{where}: {self.problem.kind}: {self.problem.message}"
        manifest = self.manifest or {}
        span = f"seq {self.first_seq}..{self.last_seq}" if self.rows else "no rows"
        return (
            f"OK export {self.path}: {self.rows:,} rows ({span}) of {manifest.get('chain')}, "
            f"{'every row and link' if manifest.get('contiguous') else 'every row'} verified, "
            f"manifest and trailer signatures genuine"
        )


@dataclass
class _State:
    rows: int = 0
    first: int | None = None
    last: int | None = None
    last_hash: str | None = None


class _Broken(Exception):
    def __init__(self, problem: ChainProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _file_problem(kind: str, message: str) -> _Broken:
    return _Broken(ChainProblem(0, kind, message))


def _check_signature(document: dict[str, Any], what: str, report: ExportReport) -> None:
    genuine = signing.verify(
        signing.document_message(document),
        key_id=str(document.get("key_id", "")),
        signature=str(document.get("signature", "")),
    )
    if genuine is None:
        report.warnings.append(f"the {what} was signed with a key this deploy does not have: not checked")
    elif not genuine:
        raise _file_problem(what, f"the {what} was altered (its signature is not genuine)")


def _csv_fields(record: list[str]) -> dict[str, Any]:
    if len(record) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} columns, found {len(record)}")
    values = dict(zip(COLUMNS, record, strict=True))
    for name in FORMULA_GUARDED:
        values[name] = unguard_formula(values[name])
    return {
        **values,
        "seq": int(values["seq"]),
        "tenant_id": int(values["tenant_id"]) if values["tenant_id"] else None,
        "ip": values["ip"] or None,
    }


def _jsonl_fields(line: bytes) -> dict[str, Any]:
    values = orjson.loads(line)
    if not isinstance(values, dict) or set(values) != set(COLUMNS):
        raise ValueError("a row object must have exactly the export's columns")
    return {**values, "details": canonical_json(values["details"])}


def audit_verify_export(path: str | Path) -> ExportReport:
    report = ExportReport(path=str(path))
    with open(path, "rb") as handle:
        try:
            _verify(handle, report)
        except _Broken as broken:
            report.problem = broken.problem
            return report
    report.ok = True
    return report


def _verify(handle: IO[bytes], report: ExportReport) -> None:
    first = handle.readline()
    if first.startswith(MANIFEST_MARK.encode() + b","):
        fmt = "csv"
        _, raw = next(csv.reader([first.decode()]))
        manifest = orjson.loads(raw)
    elif first.startswith(b'{"manifest"'):
        fmt = "jsonl"
        manifest = orjson.loads(first)["manifest"]
    else:
        raise _file_problem("manifest", "not an audit export: the first line is not a manifest")
    report.format, report.manifest = fmt, manifest
    _check_signature(manifest, "manifest", report)

    digest = hashlib.sha256()
    last_line: list[bytes] = []

    trailer_start = (TRAILER_MARK + ",").encode() if fmt == "csv" else b'{"trailer"'

    def body_lines() -> Iterator[bytes]:
        # Every line up to the trailer, counted into the digest as it passes. (No data line can
        # start like the trailer: CSV records start with a seq, JSON rows with {"seq".)
        for line in handle:
            if line.startswith(trailer_start):
                last_line.append(line)
                if handle.read(1):
                    raise _file_problem("trailer", "there is data after the trailer")
                return
            digest.update(line)
            yield line

    records = _records(fmt, body_lines())
    contiguous = bool(manifest.get("contiguous"))
    checkpoints = [
        AuditCheckpoint(
            chain=c["chain"],
            seq=c["seq"],
            hash=c["hash"],
            created_at=parse_timestamp(c["created_at"]),
            kind=c["kind"],
            key_id=c["key_id"],
            prev_signature=c["prev_signature"],
            signature=c["signature"],
        )
        for c in manifest.get("checkpoints", [])
    ]
    problems, warnings, trusted = checkpoint_problems(checkpoints, linked=False)
    report.warnings.extend(warnings)
    if problems:
        raise _Broken(problems[0])

    low, high = manifest.get("first_seq"), manifest.get("last_seq")
    state = _State()

    def wire_batches() -> Iterator[list[bytes]]:
        batch: list[bytes] = []
        previous = None
        for fields, stored in records:
            seq = fields["seq"]
            if not contiguous and previous is not None and seq <= previous:
                kind = "inserted" if seq == previous else "reordered"
                raise _Broken(ChainProblem(seq, kind, f"row {seq} comes after row {previous}"))
            if low is None or high is None or not low <= seq <= high:
                raise _Broken(ChainProblem(seq, "inserted", f"row {seq} is outside the manifest's range"))
            try:
                payloads = field_payloads(fields)
            except (KeyError, TypeError, ValueError) as exc:
                raise _Broken(ChainProblem(seq, "altered", f"row {seq} is malformed: {exc}")) from exc
            if not contiguous and hash_payloads(payloads) != stored:
                raise _Broken(ChainProblem(seq, "altered", f"row {seq}'s content does not match its hash"))
            previous = seq
            state.rows += 1
            state.first = state.first or seq
            state.last, state.last_hash = seq, stored
            batch.append(wire_row(payloads, stored))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    if contiguous:
        walked = walk(str(manifest.get("chain")), trusted, wire_batches(), partial=True)
        if walked.problem is not None:
            raise _Broken(walked.problem)
        if walked.first_seq is not None and low is not None and walked.first_seq > low:
            gap = f"{low}..{walked.first_seq - 1}"
            raise _Broken(ChainProblem(low, "deleted", f"row(s) {gap} missing from the start"))
    else:
        for _ in wire_batches():
            pass
    report.rows, report.first_seq, report.last_seq = state.rows, state.first, state.last

    if report.rows < manifest.get("row_count", 0):
        after = report.last_seq or (low or 1) - 1
        raise _Broken(
            ChainProblem(
                after + 1,
                "deleted",
                f"{manifest['row_count'] - report.rows} row(s) missing after seq {after}: "
                f"the manifest lists {manifest['row_count']}",
            )
        )
    if report.rows > manifest.get("row_count", 0) or (report.last_seq or None) != high:
        raise _Broken(ChainProblem(report.last_seq or 0, "inserted", "more rows than the manifest lists"))
    head = manifest.get("chain_head") or {}
    reached_head = contiguous and report.last_seq is not None and report.last_seq == head.get("seq")
    if reached_head and state.last_hash != head.get("hash"):
        raise _Broken(
            ChainProblem(int(report.last_seq or 0), "rewritten", "the last row does not match the chain head")
        )
    _check_trailer(last_line, fmt, manifest, digest.hexdigest(), report)


def _records(fmt: str, lines: Iterator[bytes]) -> Iterator[tuple[dict[str, Any], str]]:
    if fmt == "csv":
        reader = csv.reader(line.decode() for line in lines)
        header = next(reader, None)
        if header != list(COLUMNS):
            raise _file_problem("altered", "the CSV header is not the export's columns")
        for number, record in enumerate(reader, start=1):
            try:
                fields = _csv_fields(record)
            except ValueError as exc:
                raise _file_problem("altered", f"data record {number} is malformed: {exc}") from exc
            yield fields, record[-1]
    else:
        for number, line in enumerate(lines, start=1):
            try:
                fields = _jsonl_fields(line)
            except (ValueError, KeyError) as exc:
                raise _file_problem("altered", f"data line {number} is malformed: {exc}") from exc
            yield fields, str(fields["hash"])


def _check_trailer(
    last_line: list[bytes], fmt: str, manifest: dict[str, Any], digest: str, report: ExportReport
) -> None:
    trailer: dict[str, Any] | None = None
    if last_line:
        line = last_line[0]
        try:
            if fmt == "csv" and line.startswith(TRAILER_MARK.encode() + b","):
                trailer = orjson.loads(next(csv.reader([line.decode()]))[1])
            elif fmt == "jsonl" and line.startswith(b'{"trailer"'):
                trailer = orjson.loads(line)["trailer"]
        except (ValueError, KeyError, IndexError, StopIteration):
            trailer = None
    if trailer is None:
        raise _file_problem("trailer", "the file is truncated or altered: its last line is not the trailer")
    _check_signature(trailer, "trailer", report)
    if trailer.get("manifest_signature") != manifest.get("signature"):
        raise _file_problem("trailer", "the trailer belongs to another export")
    if trailer.get("row_count") != report.rows:
        raise _file_problem(
            "trailer", f"the trailer counts {trailer.get('row_count')} rows, the file holds {report.rows}"
        )
    if trailer.get("rows_sha256") != digest:
        raise _file_problem("trailer", "the bytes between manifest and trailer were altered")
