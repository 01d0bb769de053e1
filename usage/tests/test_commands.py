from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command

from usage.models import UsageRollup
from usage.tests.helpers import record, rollup_totals


def at(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.mark.django_db
def test_rollup_usage_processes_pending_hours(tenant, capsys):
    record(tenant, at(2026, 3, 1, 10), input_text=7)
    record(tenant, at(2026, 3, 1, 12), input_text=1)
    call_command("rollup_usage")
    out, err = capsys.readouterr()
    assert "rolled up 2 pending hours: 2 hourly and 1 daily rows written" in out
    assert "rollup: 100%" in err
    assert rollup_totals(tenant, UsageRollup.Granularity.DAY)["tokens"] == 8


@pytest.mark.django_db
def test_rollup_usage_backfills_since_a_day_for_chosen_tenants(tenant, other_tenant, capsys):
    record(tenant, at(2026, 3, 1, 10), input_text=7)
    record(other_tenant, at(2026, 3, 1, 10), input_text=9)
    UsageRollup.objects.all().delete()

    call_command(
        "rollup_usage", "--since", "2026-02-27", "--until", "2026-03-03T00:00:00Z", "--tenant", tenant.slug
    )

    out, err = capsys.readouterr()
    assert "for 1 tenants since 2026-02-27T00:00:00+00:00" in out
    assert "backfill: 100%" in err
    assert rollup_totals(tenant, UsageRollup.Granularity.DAY)["tokens"] == 7
    assert rollup_totals(other_tenant, UsageRollup.Granularity.DAY)["tokens"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday-ish"], "is not a date"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
        (["--since", "2026-03-01", "--tenant", "nobody"], "no tenant with slug nobody"),
        (["--tenant", "alice-co"], "--tenant needs --since"),
    ],
)
@pytest.mark.django_db
def test_rollup_usage_refuses_bad_arguments(tenant, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("rollup_usage", *args)


@pytest.mark.django_db
def test_rollup_usage_accepts_a_duration(tenant, capsys):
    call_command("rollup_usage", "--since", "3d")
    assert "recomputed" in capsys.readouterr().out
