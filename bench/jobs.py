"""Background-job benchmarks on PostgreSQL, each against a hand-written SQL baseline in the same run:

1. expiring 1,000,000 client secrets (`client_secret_expire_sweep`) vs one `UPDATE … WHERE status
   = 'active' AND expires_at <= now` (target ratio <= 1.5);
2. rolling up 1,000,000 usage events (`usage_rollup_run`, hourly and daily rows, from the pending
   markers `usage_record` leaves) vs one `INSERT … SELECT … GROUP BY` of the hourly rows
   (target ratio <= 1.5);
3. peak memory (RSS) of the process running each job, at 100k and at 1M rows (target: flat).

Each job runs in a fresh child process (`python -m bench.jobs --child …`), so its peak RSS is its
own; times are the job's own call (child) and the baseline statement (parent), both on a warm
table after VACUUM ANALYZE; rounds alternate (A B B A …) and each side's best time counts, so
other load on the machine does not decide the ratio. Needs DATABASE_URL pointing at PostgreSQL; it works in a
throw-away database `<name>_bench_jobs` and drops it afterwards.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rtp python -m bench jobs
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_platform.settings")
os.environ.setdefault("RTP_READ_DOTENV", "false")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-not-for-production-0123456789")
os.environ.setdefault("DJANGO_LOG_LEVEL", "WARNING")

SECRETS_LIVE_SHARE = 10  # plus 1 live (not yet expired) secret per 10 expired ones
TENANTS = 50
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo"]
WEEK_SECONDS = 7 * 24 * 3600
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
EVENTS_START = NOW - timedelta(days=8)
# Rounds, interleaved so load from other processes on the machine hits both sides alike; each
# side's best time is compared.
INTERLEAVED_SECRETS = ("baseline", "sweep", "sweep", "baseline")
# The rollup job raises work_mem for its own transaction (RTP_ROLLUP_WORK_MEM), so the baseline
# runs both at the server default and with that work_mem, and its best round counts.
INTERLEAVED_ROLLUPS = ("baseline", "rollup", "baseline-wm", "rollup", "baseline", "rollup", "baseline-wm")


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- child: run one job, report time and memory --------------------------------------------------


def child(job: str) -> None:
    import django

    django.setup()
    before = rss_kb()
    started = time.perf_counter()
    if job == "expire":
        from tokens.services import client_secret_expire_sweep

        done: Any = client_secret_expire_sweep(now=NOW)
    elif job == "rollup":
        from usage.rollups import usage_rollup_run

        done = usage_rollup_run(now=NOW).hours_claimed
    else:
        raise SystemExit(f"unknown job {job}")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "done": done, "rss_before_kb": before, "rss_peak_kb": peak}))


def run_child(job: str, database_url: str) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "bench.jobs", "--child", job]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- parent: data, baselines, report ------------------------------------------------------------


def execute(sql: str, params: Any = None) -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    return time.perf_counter() - started


def scalar(sql: str, params: Any = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def vacuum(table: str) -> None:
    execute(f"VACUUM ANALYZE {table}")


def load_secrets(tenant_id: int, first: int, last: int) -> None:
    execute(
        """
        INSERT INTO tokens_clientsecret (id, tenant_id, kind, lookup_prefix, fingerprint, last_four, model,
            session_config, status, single_use, upstream_session_id, request_id, created_at, expires_at)
        SELECT 'cs_bench' || lpad(g::text, 13, '0'), %(tenant)s, 'relay', '', md5(g::text) || md5((-g)::text),
            'abcd', 'gpt-realtime', '{}', 'active', true, '', '', %(now)s - interval '2 hours',
            CASE WHEN g %% %(share)s = 0 THEN %(now)s + interval '1 hour'
                 ELSE %(now)s - interval '1 hour' + (g %% 3600) * interval '1 second' END
        FROM generate_series(%(first)s, %(last)s) g
        """,
        {"tenant": tenant_id, "now": NOW, "share": SECRETS_LIVE_SHARE + 1, "first": first, "last": last},
    )
    vacuum("tokens_clientsecret")


def reload_secrets(tenant_id: int, total: int) -> None:
    """A fresh table for each round (cheaper than undoing a million updates, and the same start)."""
    execute("TRUNCATE tokens_clientsecret CASCADE")
    load_secrets(tenant_id, 1, total)


def expire_baseline() -> tuple[float, int]:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tokens_clientsecret SET status = 'expired' WHERE status = 'active' AND expires_at <= %s",
            [NOW],
        )
        count = cursor.rowcount
    return time.perf_counter() - started, count


def load_events(tenants: list[int], keys: list[int], first: int, last: int) -> None:
    execute(
        """
        INSERT INTO usage_usageevent (tenant_id, api_key_id, kind, natural_key, model, occurred_at,
            input_text_tokens, input_audio_tokens, input_image_tokens, cached_text_tokens,
            cached_audio_tokens, cached_image_tokens, output_text_tokens, output_audio_tokens,
            audio_in_ms, audio_out_ms, cost_usd)
        SELECT
            (%(tenants)s::bigint[])[1 + g %% %(t)s],
            (%(keys)s::bigint[])[1 + (g %% %(t)s) * 2 + (g / %(t)s) %% 2],
            CASE WHEN g %% 20 = 0 THEN 'session_ended'
                 WHEN g %% 10 = 1 THEN 'secret_issued' ELSE 'response' END,
            'bench:' || g,
            (ARRAY['gpt-realtime', 'gpt-realtime-mini', 'gpt-4o-realtime-preview'])[1 + (g / 7) %% 3],
            %(start)s + g * (%(week)s::float8 / %(total)s) * interval '1 second',
            g %% 500, g %% 300, 0, g %% 100, g %% 50, 0, g %% 200, g %% 400, (g %% 7) * 1000, (g %% 5) * 1000,
            ((g %% 500) * 4 + (g %% 400) * 64)::numeric / 1000000
        FROM generate_series(%(first)s, %(last)s) g
        """,
        {
            "tenants": tenants,
            "keys": keys,
            "t": len(tenants),
            "start": EVENTS_START,
            "week": WEEK_SECONDS,
            "total": 1_000_000,
            "first": first,
            "last": last,
        },
    )
    vacuum("usage_usageevent")


def mark_all_pending() -> None:
    """The markers usage_record would have left, one per tenant and UTC hour with events."""
    execute(
        """
        INSERT INTO usage_usagerolluppending (tenant_id, hour_start, touched_at)
        SELECT DISTINCT tenant_id, date_trunc('hour', occurred_at, 'UTC'), %s FROM usage_usageevent
        ON CONFLICT (tenant_id, hour_start) DO NOTHING
        """,
        [NOW - timedelta(minutes=1)],
    )
    vacuum("usage_usagerolluppending")


def reset_rollups() -> None:
    execute("TRUNCATE usage_usagerollup")
    mark_all_pending()
    vacuum("usage_usagerollup")


ROLLUP_BASELINE = """
INSERT INTO usage_usagerollup (tenant_id, api_key_id, model, granularity, bucket_start,
    responses, sessions, secrets, input_text_tokens, input_audio_tokens, input_image_tokens,
    cached_text_tokens, cached_audio_tokens, cached_image_tokens, output_text_tokens,
    output_audio_tokens, audio_in_ms, audio_out_ms, cost_usd, computed_at)
SELECT e.tenant_id, e.api_key_id, e.model, 'hour', date_trunc('hour', e.occurred_at, t.time_zone),
    SUM(CASE WHEN e.kind = 'response' THEN 1 ELSE 0 END),
    SUM(CASE WHEN e.kind = 'session_ended' THEN 1 ELSE 0 END),
    SUM(CASE WHEN e.kind = 'secret_issued' THEN 1 ELSE 0 END),
    SUM(e.input_text_tokens), SUM(e.input_audio_tokens), SUM(e.input_image_tokens),
    SUM(e.cached_text_tokens), SUM(e.cached_audio_tokens), SUM(e.cached_image_tokens),
    SUM(e.output_text_tokens), SUM(e.output_audio_tokens),
    SUM(e.audio_in_ms), SUM(e.audio_out_ms), SUM(e.cost_usd), now()
FROM usage_usageevent e JOIN tenants_tenant t ON t.id = e.tenant_id
GROUP BY 1, 2, 3, 5
"""


def rollup_baseline(*, work_mem: bool) -> float:
    from django.conf import settings
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        if work_mem:
            cursor.execute("SELECT set_config('work_mem', %s, true)", [settings.ROLLUP_WORK_MEM])
        started = time.perf_counter()
        cursor.execute(ROLLUP_BASELINE)
        return time.perf_counter() - started


def hour_checksum() -> tuple[Any, ...]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), sum(input_text_tokens), sum(output_audio_tokens), sum(cost_usd), "
            "sum(responses), sum(sessions), sum(secrets) FROM usage_usagerollup WHERE granularity = 'hour'"
        )
        return tuple(cursor.fetchone())


def make_tenants() -> tuple[list[int], list[int]]:
    from audit.actors import Actor
    from tenants.models import Tenant
    from tenants.services import api_key_create, tenant_create

    actor = Actor.system("bench")
    tenants, keys = [], []
    for n in range(TENANTS):
        tenant = tenant_create(slug=f"bench-{n}", actor=actor)
        Tenant.objects.filter(pk=tenant.pk).update(time_zone=ZONES[n % len(ZONES)])
        tenants.append(tenant.pk)
        keys += [api_key_create(tenant=tenant, name=f"k{i}", actor=actor).api_key.pk for i in range(2)]
    return tenants, keys


def database_url(name: str) -> str:
    from django.db import connection

    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def main() -> int:
    import django

    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        print("skipped: the job benchmarks need PostgreSQL (set DATABASE_URL=postgres://...)")
        return 0
    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    connection.settings_dict.setdefault("TEST", {})["NAME"] = f"{connection.settings_dict['NAME']}_bench_jobs"
    state = setup_databases(verbosity=0, interactive=False)
    url = database_url(connection.settings_dict["NAME"])
    ok = True
    try:
        tenants, keys = make_tenants()
        version = scalar("SHOW server_version")
        print(f"PostgreSQL {version}, {TENANTS} tenants in {len(ZONES)} time zones", flush=True)

        # --- 1. secret expiry -------------------------------------------------------------------------
        load_secrets(tenants[0], 1, 110_000)
        small = run_child("expire", url)
        baseline_times, sweep_times, sweeps = [], [], []
        for round_no, which in enumerate(INTERLEAVED_SECRETS):  # A B B A: drift hits both alike
            reload_secrets(tenants[0], 1_100_000)
            if which == "baseline":
                seconds, count = expire_baseline()
                assert count == 1_000_000, count
                baseline_times.append(seconds)
            else:
                result = run_child("expire", url)
                assert result["done"] == 1_000_000, result
                sweeps.append(result)
                sweep_times.append(result["seconds"])
            latest = (sweep_times if which == "sweep" else baseline_times)[-1]
            print(f"  round {round_no + 1}: {which} {latest:.2f}s", flush=True)
        expire_ratio = min(sweep_times) / min(baseline_times)
        print(
            f"expire 1,000,000 secrets (of 1,100,000): sweep {min(sweep_times):.2f}s, one UPDATE "
            f"{min(baseline_times):.2f}s, ratio {expire_ratio:.2f} (target <= 1.5)"
        )
        print(
            f"  sweep process peak RSS: {mb(small['rss_peak_kb'])} at 100k, "
            f"{mb(sweeps[0]['rss_peak_kb'])} at 1M "
            f"(growth during the job: {mb(small['rss_peak_kb'] - small['rss_before_kb'])} / "
            f"{mb(sweeps[0]['rss_peak_kb'] - sweeps[0]['rss_before_kb'])})",
            flush=True,
        )
        execute("TRUNCATE tokens_clientsecret CASCADE")

        # --- 2. usage rollups -------------------------------------------------------------------------
        load_events(tenants, keys, 1, 100_000)
        mark_all_pending()
        small = run_child("rollup", url)
        load_events(tenants, keys, 100_001, 1_000_000)
        events = scalar("SELECT count(*) FROM usage_usageevent")
        baseline_times, rollup_times, rollups = [], [], []
        expected = None
        for which in INTERLEAVED_ROLLUPS:
            if which.startswith("baseline"):
                execute("TRUNCATE usage_usagerollup")
                vacuum("usage_usagerollup")
                baseline_times.append(rollup_baseline(work_mem=which == "baseline-wm"))
                print(f"  round: {which} {baseline_times[-1]:.2f}s", flush=True)
                expected = hour_checksum()
            else:
                reset_rollups()
                result = run_child("rollup", url)
                print(f"  round: rollup {result['seconds']:.2f}s", flush=True)
                rollups.append(result)
                rollup_times.append(result["seconds"])
                days = scalar("SELECT count(*) FROM usage_usagerollup WHERE granularity = 'day'")
                got = hour_checksum()
                if got != expected:
                    print(f"  MISMATCH: rollup hourly rows {got} != baseline {expected}")
                    ok = False
        rollup_ratio = min(rollup_times) / min(baseline_times)
        print(
            f"roll up {events:,} usage events ({expected[0]:,} hourly rows, {days:,} daily rows, "
            f"{rollups[0]['done']:,} pending tenant-hours): rollup {min(rollup_times):.2f}s, one INSERT ... "
            f"SELECT ... GROUP BY (hourly only; best of default and {settings.ROLLUP_WORK_MEM} work_mem) "
            f"{min(baseline_times):.2f}s, "
            f"ratio {rollup_ratio:.2f} (target <= 1.5)"
        )
        print(
            f"  rollup process peak RSS: {mb(small['rss_peak_kb'])} at 100k, "
            f"{mb(rollups[0]['rss_peak_kb'])} at 1M "
            f"(growth during the job: {mb(small['rss_peak_kb'] - small['rss_before_kb'])} / "
            f"{mb(rollups[0]['rss_peak_kb'] - rollups[0]['rss_before_kb'])})",
            flush=True,
        )
        ok = ok and expire_ratio <= 1.5 and rollup_ratio <= 1.5
    finally:
        connection.close()
        teardown_databases(state, verbosity=0)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        sys.exit(main())
