from __future__ import annotations

import itertools
from datetime import datetime
from decimal import Decimal

from django.db.models import Sum

from usage.models import UsageEvent, UsageRollup
from usage.pricing import TokenUsage
from usage.services import usage_record

_keys = itertools.count()


def record(
    tenant,
    at: datetime,
    *,
    api_key=None,
    model: str = "gpt-realtime",
    kind: str = UsageEvent.Kind.RESPONSE,
    input_text: int = 100,
    output_audio: int = 10,
    audio_in_ms: int = 0,
    charge: bool = True,
):
    """One ledger fact through the real service (which also marks its hour for rollup)."""
    tokens = (
        TokenUsage(input_text=input_text, output_audio=output_audio)
        if kind == UsageEvent.Kind.RESPONSE
        else None
    )
    return usage_record(
        tenant=tenant,
        kind=kind,
        natural_key=f"test:{next(_keys)}",
        api_key=api_key,
        model=model,
        tokens=tokens,
        audio_in_ms=audio_in_ms,
        occurred_at=at,
        charge=charge,
    ).event


def rollup_rows(tenant, granularity: str) -> list[tuple]:
    return list(
        UsageRollup.objects.filter(tenant=tenant, granularity=granularity)
        .order_by("bucket_start", "api_key_id", "model")
        .values_list("bucket_start", "api_key_id", "model", "responses", "input_text_tokens", "cost_usd")
    )


def ledger_totals(tenant) -> dict:
    totals = UsageEvent.objects.filter(tenant=tenant).aggregate(
        tokens=Sum("input_text_tokens"), cost=Sum("cost_usd"), audio=Sum("audio_in_ms")
    )
    return {k: v or 0 for k, v in totals.items()}


def rollup_totals(tenant, granularity: str) -> dict:
    totals = UsageRollup.objects.filter(tenant=tenant, granularity=granularity).aggregate(
        tokens=Sum("input_text_tokens"), cost=Sum("cost_usd"), audio=Sum("audio_in_ms")
    )
    return {k: v or 0 for k, v in totals.items()}


def same_money(a, b) -> bool:
    return Decimal(str(a)).quantize(Decimal("0.000001")) == Decimal(str(b)).quantize(Decimal("0.000001"))
