"""Audit trail benchmark (PostgreSQL): `python -m bench audit` (or `python -m bench.audit`).

In one run, on a scratch database it creates and drops (BENCH_DATABASE_URL, or DATABASE_URL's
server with the database `rtp_bench_audit`, or postgres@127.0.0.1):

1. loads a 1,000,000-row chain and a 100,000-row chain (hashed as the recorder would, COPY'd in);
2. verifier: rows/s of `audit_verify_chain` over the 1M chain (target >= 500,000/s);
3. CSV export of the 1M chain vs PostgreSQL's own `COPY (SELECT …) TO STDOUT WITH CSV` of the same
   rows through psql, in the same run (target ratio <= 2.5);
4. peak RSS of the exporting process at 100k and at 1M rows (target: flat, under 150 MB);
5. recorder appends/s with 16 concurrent writers (processes, one transaction per append) in one
   tenant (target >= 2,000/s) and across 16 tenants (target >= 10,000/s), then verifies those
   chains: concurrency must not fork them.

Environment: BENCH_ROWS (default 1000000), BENCH_SMALL_ROWS (100000), BENCH_WRITE_SECONDS (8),
BENCH_KEEP_DB=1 to keep the scratch database.
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
SMALL_ROWS = int(os.environ.get("BENCH_SMALL_ROWS", "100000"))
WRITE_SECONDS = float(os.environ.get("BENCH_WRITE_SECONDS", "8"))
WRITERS = 16


def _bench_url() -> str:
    explicit = os.environ.get("BENCH_DATABASE_URL")
    if explicit:
        return explicit
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        base = "postgres://postgres@127.0.0.1:5432/postgres"
    return _with_database(base, "rtp_bench_audit")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql", path=f"/{name}"))


def _setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_platform.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-0123456789")
    os.environ.setdefault("RTP_READ_DOTENV", "false")
    os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")
    os.environ["DATABASE_CONN_MAX_AGE"] = "0"
    import django

    django.setup()


def _name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _create_database(url: str) -> None:
    import psycopg

    name = _name(url)
    with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(url: str) -> None:
    import psycopg

    name = _name(url)
    with psycopg.connect(_with_database(url, "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _peak_rss_mb() -> float:
    """This process's peak resident set. On Linux, VmHWM of its own memory map: getrusage's
    ru_maxrss would carry over the peak of the process it was forked from (the bench parent)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- child: one export, measured from inside --------------------------------------------------


def child_export(slug: str) -> None:
    from audit.actors import Actor
    from audit.exports import audit_export_start, audit_export_write, export_select_sql
    from tenants.models import Tenant

    tenant = Tenant.objects.get(slug=slug)
    started = time.perf_counter()
    export = audit_export_start(tenant=tenant, actor=Actor.system("bench"), fmt="csv")
    with open(os.devnull, "wb") as sink:
        trailer = audit_export_write(export, sink)
    seconds = time.perf_counter() - started
    _, sql_text = export_select_sql(export)
    print(
        json.dumps(
            {"seconds": seconds, "rows": trailer["row_count"], "peak_rss_mb": _peak_rss_mb(), "sql": sql_text}
        )
    )


def _run_child(*args: str) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, "-m", "bench.audit", *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def _copy_baseline(url: str, sql_text: str) -> float:
    """PostgreSQL's own COPY of the same SELECT to CSV, through psql (or psycopg without psql)."""
    statement = f"COPY ({sql_text}) TO STDOUT WITH (FORMAT csv)"
    started = time.perf_counter()
    if shutil.which("psql"):
        with open(os.devnull, "wb") as sink:
            subprocess.run(
                ["psql", _with_database(url, _name(url)), "-qc", statement], stdout=sink, check=True
            )
    else:
        import psycopg

        with (
            psycopg.connect(_with_database(url, _name(url))) as conn,
            conn.cursor() as cur,
            cur.copy(statement) as copy,
        ):
            for _ in copy:
                pass
    return time.perf_counter() - started


# --- writers ----------------------------------------------------------------------------------


def _writer(tenant_id: int, start_at: float, stop_at: float, counts: Any, index: int) -> None:
    from django.db import connection

    from audit.actors import Actor
    from audit.services import audit_record
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=tenant_id)
    actor = Actor("api_key", str(index), f"rtp_sk_W{index:07d}", ip="10.0.0.1")
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    while time.time() < stop_at:
        audit_record(
            tenant=tenant,
            actor=actor,
            action="secret.issued",
            target_type="tokens.clientsecret",
            target_id=str(done),
            details={"model": "gpt-realtime", "ttl_seconds": 60, "writer": index},
        )
        done += 1
    counts[index] = done
    connection.close()


def _append_rate(tenant_ids: list[int]) -> float:
    from django.db import connections

    connections.close_all()  # never share a connection with the forked writers
    context = multiprocessing.get_context("fork")
    counts = context.Array("i", WRITERS)
    start_at = time.time() + 2.0
    stop_at = start_at + WRITE_SECONDS
    pool = [
        context.Process(target=_writer, args=(tenant_ids[i % len(tenant_ids)], start_at, stop_at, counts, i))
        for i in range(WRITERS)
    ]
    for process in pool:
        process.start()
    for process in pool:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"a writer failed (exit {process.exitcode})")
    return sum(counts) / WRITE_SECONDS


def _pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    return candidates[-1] if candidates else None


def _pgbench_rate(url: str, spread: bool) -> float | None:
    """The database's own ceiling for the recorder's pattern, from a C client: one statement that
    locks a head row (one hot row, or one of 16) and inserts a row, 16 clients."""
    binary = _pgbench()
    if binary is None:
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_head, bench_rows")
        conn.execute("CREATE TABLE bench_head (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, head int, n bigint, payload text)")
        conn.execute("INSERT INTO bench_head SELECT g, 0 FROM generate_series(1, 16) g")
    head = "random(1, 16)" if spread else "1"
    script = (
        f"\\set k {head}\n"
        "WITH old AS (SELECT id, n FROM bench_head WHERE id = :k FOR UPDATE), "
        "moved AS (UPDATE bench_head h SET n = old.n + 1 FROM old WHERE h.id = old.id) "
        "INSERT INTO bench_rows (head, n, payload) SELECT id, n + 1, repeat('x', 400) FROM old;\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    try:
        output = subprocess.run(
            [
                binary,
                "-n",
                "-M",
                "prepared",
                "-c",
                str(WRITERS),
                "-j",
                "2",
                "-T",
                str(int(WRITE_SECONDS)),
                "-f",
                handle.name,
                url,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    match = re.search(r"tps = ([0-9.]+)", output)
    return float(match.group(1)) if match else None


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    url = _bench_url()
    _create_database(url)
    _setup_django(url)
    from django.core.management import call_command
    from django.db import connection

    from audit.actors import Actor
    from audit.chain import chain_for
    from audit.verification import audit_verify_chain
    from bench.audit_data import load_chain
    from tenants.services import tenant_create

    results: dict[str, Any] = {"rows": ROWS, "small_rows": SMALL_ROWS, "load_average": os.getloadavg()}
    try:
        call_command("migrate", verbosity=0)
        system = Actor.system("bench")
        big = tenant_create(slug="bench-big", actor=system)
        small = tenant_create(slug="bench-small", actor=system)
        started = time.perf_counter()
        load_chain(tenant_id=big.pk, rows=ROWS - 1)  # + tenant.created = ROWS
        load_chain(tenant_id=small.pk, rows=SMALL_ROWS - 1, seed=11)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE audit_auditevent")
        results["load_seconds"] = round(time.perf_counter() - started, 1)
        print(f"loaded {ROWS:,} + {SMALL_ROWS:,} rows in {results['load_seconds']} s", flush=True)

        best, best_cpu = float("inf"), float("inf")
        for _ in range(3):
            cpu = time.process_time()
            report = audit_verify_chain(chain=chain_for(big.pk))
            assert report.ok, report.summary()
            best, best_cpu = min(best, report.seconds), min(best_cpu, time.process_time() - cpu)
        results["verify_rows_per_s"] = round(ROWS / best)
        results["verify_rows_per_cpu_s"] = round(ROWS / best_cpu)
        print(
            f"verifier: {ROWS:,} rows in {best:.2f} s = {results['verify_rows_per_s']:,} rows/s "
            f"({results['verify_rows_per_cpu_s']:,} rows per CPU-second of the verifying process)",
            flush=True,
        )

        small_export = _run_child("export", small.slug)
        big_export = _run_child("export", big.slug)
        assert (big_export["rows"], small_export["rows"]) == (ROWS, SMALL_ROWS)
        copy_seconds = min(_copy_baseline(url, big_export["sql"]) for _ in range(2))
        export_seconds = min(big_export["seconds"], _run_child("export", big.slug)["seconds"])
        results.update(
            {
                "export_seconds": round(export_seconds, 2),
                "copy_seconds": round(copy_seconds, 2),
                "export_vs_copy": round(export_seconds / copy_seconds, 2),
                "export_peak_rss_mb_small": round(small_export["peak_rss_mb"], 1),
                "export_peak_rss_mb_big": round(big_export["peak_rss_mb"], 1),
            }
        )
        print(
            f"CSV export of {ROWS:,} rows: {export_seconds:.2f} s; psql COPY of the same rows: "
            f"{copy_seconds:.2f} s; ratio {results['export_vs_copy']}",
            flush=True,
        )
        print(
            f"exporting process peak RSS: {results['export_peak_rss_mb_small']} MB at {SMALL_ROWS:,} rows, "
            f"{results['export_peak_rss_mb_big']} MB at {ROWS:,} rows",
            flush=True,
        )

        one = tenant_create(slug="bench-one", actor=system)
        many = [tenant_create(slug=f"bench-w{i}", actor=system) for i in range(WRITERS)]
        from django.conf import settings

        settings.AUDIT_PREPARED_STATEMENTS = False  # the default
        results["append_one_tenant_per_s"] = round(_append_rate([one.pk]))
        results["append_16_tenants_per_s"] = round(_append_rate([t.pk for t in many]))
        settings.AUDIT_PREPARED_STATEMENTS = True  # RTP_AUDIT_PREPARED_STATEMENTS=true
        results["append_one_tenant_prepared_per_s"] = round(_append_rate([one.pk]))
        results["append_16_tenants_prepared_per_s"] = round(_append_rate([t.pk for t in many]))
        results["pgbench_one_head_per_s"] = _pgbench_rate(url, spread=False)
        results["pgbench_16_heads_per_s"] = _pgbench_rate(url, spread=True)
        for tenant in [one, *many]:
            report = audit_verify_chain(chain=chain_for(tenant.pk))
            assert report.ok, report.summary()
        print(
            f"recorder, {WRITERS} writers: {results['append_one_tenant_per_s']:,}/s in one tenant, "
            f"{results['append_16_tenants_per_s']:,}/s across {WRITERS} tenants; with prepared "
            f"statements {results['append_one_tenant_prepared_per_s']:,}/s and "
            f"{results['append_16_tenants_prepared_per_s']:,}/s (chains verified after)",
            flush=True,
        )
        if results["pgbench_one_head_per_s"]:
            print(
                f"the database's own ceiling for that pattern (pgbench: C client, prepared, {WRITERS} "
                "clients): "
                f"{results['pgbench_one_head_per_s']:,.0f}/s on one head row, "
                f"{results['pgbench_16_heads_per_s']:,.0f}/s over 16; recorder ratios "
                f"{results['append_one_tenant_prepared_per_s'] / results['pgbench_one_head_per_s']:.2f} and "
                f"{results['append_16_tenants_prepared_per_s'] / results['pgbench_16_heads_per_s']:.2f} "
                "(prepared)",
                flush=True,
            )
    finally:
        from django.db import connections

        connections.close_all()
        if os.environ.get("BENCH_KEEP_DB") != "1":
            _drop_database(url)

    targets = [
        ("verifier rows/s >= 500,000", results["verify_rows_per_s"] >= 500_000),
        ("CSV export / COPY <= 2.5", results["export_vs_copy"] <= 2.5),
        (
            "export RSS flat and < 150 MB",
            results["export_peak_rss_mb_big"] < 150
            and results["export_peak_rss_mb_big"] < results["export_peak_rss_mb_small"] * 1.2,
        ),
        (
            "appends/s one tenant >= 2,000",
            max(results["append_one_tenant_per_s"], results["append_one_tenant_prepared_per_s"]) >= 2_000,
        ),
        (
            "appends/s 16 tenants >= 10,000",
            max(results["append_16_tenants_per_s"], results["append_16_tenants_prepared_per_s"]) >= 10_000,
        ),
    ]
    print("\n".join(f"  [{'met' if ok else 'MISSED'}] {name}" for name, ok in targets))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "export":
        _setup_django(_bench_url())
        child_export(sys.argv[2])
    else:
        sys.exit(main())
