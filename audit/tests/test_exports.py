from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from audit.actors import Actor
from audit.chain import chain_for
from audit.export_verification import audit_verify_export
from audit.exports import audit_export_start, audit_export_write
from audit.models import AuditEvent
from audit.selectors import AuditFilter
from audit.tests.conftest import bulk_chain, record_many

pytestmark = pytest.mark.django_db

CAROL = Actor("user", "7", "carol", ip="10.9.9.9")


def export_file(tmp_path, tenant, fmt="csv", filters=None, name="export"):
    export = audit_export_start(tenant=tenant, actor=CAROL, fmt=fmt, filters=filters)
    path = tmp_path / f"{name}.{fmt}"
    with open(path, "wb") as out:
        audit_export_write(export, out)
    return export, path


def data_rows(path):
    """The data records of a CSV export, as a spreadsheet tool would read them."""
    text = path.read_text()
    return list(csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#")))


def jsonl_rows(path):
    lines = path.read_bytes().splitlines()
    return [orjson.loads(line) for line in lines[1:-1]]


def rewrite(path, edit):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(lines)))


@pytest.fixture
def trail(tenant):
    record_many(tenant, 6)
    record_many(tenant, 3, action="session.refused")
    audit_record_formula(tenant)
    return tenant


def audit_record_formula(tenant):
    from audit.services import audit_record

    audit_record(
        tenant=tenant,
        actor=Actor("api_key", "3", '=HYPERLINK("http://x")'),
        action="key.created",
        target_type="tenants.apikey",
        target_id="-3",
        details={"name": "@SUM(A1)"},
        request_id="+req",
    )


# --- CSV and JSON Lines -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_full_export_carries_its_manifest_and_verifies_offline(tmp_path, trail, fmt):
    export, path = export_file(tmp_path, trail, fmt)
    manifest = export.manifest
    assert manifest["chain"] == chain_for(trail.pk)
    assert (manifest["row_count"], manifest["first_seq"], manifest["last_seq"]) == (11, 1, 11)
    assert manifest["chain_head"]["seq"] == 11
    assert manifest["chain_head"]["hash"] == AuditEvent.objects.get(chain=chain_for(trail.pk), seq=11).hash
    assert manifest["contiguous"] is True
    assert manifest["export_event"]["seq"] == 12
    report = audit_verify_export(path)
    assert report.ok, report.summary()
    assert (report.rows, report.first_seq, report.last_seq) == (11, 1, 11)
    assert export.trailer["row_count"] == 11


def test_every_export_is_itself_audited(tmp_path, trail):
    export_file(tmp_path, trail, "csv", AuditFilter(action="session.refused"))
    event = AuditEvent.objects.get(chain=chain_for(trail.pk), action="export.created")
    assert (event.actor_type, event.actor_label, str(event.ip)) == ("user", "carol", "10.9.9.9")
    assert event.details["format"] == "csv"
    assert event.details["filter"] == {"action": "session.refused"}
    assert event.details["row_count"] == 3
    assert event.details["chain_head"]["seq"] == 11


def test_csv_cells_never_run_as_spreadsheet_formulas_and_round_trip(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "csv")
    last = data_rows(path)[-1]
    assert last["actor_label"] == '\'=HYPERLINK("http://x")'
    assert last["target_id"] == "'-3"
    assert last["request_id"] == "'+req"
    assert orjson.loads(last["details"]) == {"name": "@SUM(A1)"}  # a JSON cell starts with {
    assert audit_verify_export(path).ok


def test_jsonl_rows_hold_the_stored_values(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "jsonl")
    rows = jsonl_rows(path)
    assert [r["seq"] for r in rows] == list(range(1, 12))
    assert rows[-1]["actor_label"] == '=HYPERLINK("http://x")'
    assert rows[1]["details"] == {"i": 0, "note": "event 0"}
    assert rows[1]["ip"] == "10.0.0.1"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_filtered_and_period_exports_verify(tmp_path, trail, fmt, clock):
    _, path = export_file(tmp_path, trail, fmt, AuditFilter(action="session.refused"), "refused")
    report = audit_verify_export(path)
    assert report.ok, report.summary()
    assert report.manifest["contiguous"] is False
    assert report.rows == 3
    events = list(AuditEvent.objects.filter(chain=chain_for(trail.pk)).order_by("seq"))
    period = AuditFilter(since=events[3].created_at, until=events[8].created_at)
    export, path = export_file(tmp_path, trail, fmt, period, "period")
    report = audit_verify_export(path)
    assert report.ok, report.summary()
    assert (report.first_seq, report.last_seq) == (4, 8)
    assert export.manifest["contiguous"] is True


def test_an_empty_selection_exports_a_verifiable_empty_file(tmp_path, trail):
    export, path = export_file(tmp_path, trail, "csv", AuditFilter(action="nothing.happened"))
    assert export.manifest["row_count"] == 0
    report = audit_verify_export(path)
    assert report.ok, report.summary()
    assert report.rows == 0


def test_other_tenants_rows_never_appear_in_an_export(tmp_path, trail, other_tenant):
    record_many(other_tenant, 4, action="session.refused")
    _, path = export_file(tmp_path, trail, "csv")
    rows = data_rows(path)
    assert {r["chain"] for r in rows} == {chain_for(trail.pk)}
    assert len(rows) == 11


# --- Tampered export files --------------------------------------------------------------------


def first_problem(path):
    report = audit_verify_export(path)
    assert not report.ok, report.summary()
    return report.problem


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_altered_row_in_an_export_is_caught_at_its_seq(tmp_path, trail, fmt):
    _, path = export_file(tmp_path, trail, fmt)
    index = 6 if fmt == "csv" else 5  # row 5, after the manifest (and the CSV header)
    rewrite(
        path,
        lambda lines: [ln.replace(b"req_3", b"req_9") if i == index else ln for i, ln in enumerate(lines)],
    )
    problem = first_problem(path)
    assert (problem.seq, problem.kind) == (5, "altered")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_deleted_row_in_an_export_is_caught_at_its_seq(tmp_path, trail, fmt):
    _, path = export_file(tmp_path, trail, fmt)
    offset = 2 if fmt == "csv" else 1
    rewrite(path, lambda lines: [ln for i, ln in enumerate(lines) if i != offset + 6])
    problem = first_problem(path)
    assert (problem.seq, problem.kind) == (7, "deleted")


def test_reordered_rows_in_an_export_are_caught(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "jsonl")

    def swap(lines):
        lines[4], lines[5] = lines[5], lines[4]
        return lines

    rewrite(path, swap)  # rows 4 and 5 trade places
    problem = first_problem(path)
    assert (problem.seq, problem.kind) == (4, "reordered")


def test_a_deleted_row_in_a_filtered_export_is_caught_by_the_count(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "csv", AuditFilter(action="session.refused"))
    rewrite(path, lambda lines: [ln for i, ln in enumerate(lines) if i != len(lines) - 2])
    problem = first_problem(path)
    assert problem.kind == "deleted"


def test_a_truncated_export_is_caught(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "csv")
    rewrite(path, lambda lines: lines[:-1])
    assert first_problem(path).kind == "trailer"


def test_an_altered_manifest_is_caught(tmp_path, trail):
    _, path = export_file(tmp_path, trail, "jsonl")
    rewrite(path, lambda lines: [lines[0].replace(b'"row_count":11', b'"row_count":10'), *lines[1:]])
    assert first_problem(path).kind == "manifest"


def test_rows_rewritten_consistently_are_caught_by_the_trailer(tmp_path, trail):
    """Someone edits a row and fixes its hash and every later link: the signed trailer still
    gives it away (and the chain head in the manifest would too)."""
    from audit.chain import compute_hash

    _, path = export_file(tmp_path, trail, "jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    rows = [orjson.loads(line) for line in lines[1:-1]]
    rows[4]["action"] = "key.deleted"
    for i in range(4, len(rows)):
        if i > 4:
            rows[i]["prev_hash"] = rows[i - 1]["hash"]
        rows[i]["hash"] = compute_hash(rows[i])
    path.write_bytes(lines[0] + b"".join(orjson.dumps(r) + b"\n" for r in rows) + lines[-1])
    problem = first_problem(path)
    assert problem.kind in {"trailer", "rewritten"}


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("seq,action\n1,x\n")
    assert first_problem(path).kind == "manifest"


# --- Constant memory --------------------------------------------------------------------------


def peak_while_streaming(tenant):
    export = audit_export_start(tenant=tenant, actor=CAROL, fmt="csv")
    tracemalloc.start()
    total = 0
    for chunk in export.chunks():
        total += len(chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, total


def test_streaming_an_export_takes_the_same_memory_for_4x_the_rows(tenant, other_tenant):
    bulk_chain(tenant, 3_000)
    bulk_chain(other_tenant, 12_000)
    small_peak, small_bytes = peak_while_streaming(tenant)
    large_peak, large_bytes = peak_while_streaming(other_tenant)
    assert large_bytes > 3.5 * small_bytes
    assert large_peak < 1.3 * small_peak + 256 * 1024, (small_peak, large_peak)
    assert large_peak < large_bytes / 2  # never the whole file in memory


def test_a_large_export_verifies(tmp_path, tenant):
    bulk_chain(tenant, 5_000, start=timezone.now() - timedelta(days=1))
    _, path = export_file(tmp_path, tenant, "csv")
    report = audit_verify_export(path)
    assert report.ok, report.summary()
    assert report.rows == 5_001
