from __future__ import annotations

import pytest

from tenants.services import quota_override_update
from usage.models import Metric, UsageEvent
from usage.pricing import TokenUsage
from usage.services import quota_used, usage_record


@pytest.mark.django_db
def test_a_fact_is_recorded_and_charged_once_however_often_it_is_replayed(tenant, system_actor):
    tokens = TokenUsage(input_text=100, output_audio=50)
    first = usage_record(
        tenant=tenant,
        kind=UsageEvent.Kind.RESPONSE,
        natural_key="resp:s1:r1",
        model="gpt-realtime",
        tokens=tokens,
        audio_in_ms=1200,
    )
    again = usage_record(
        tenant=tenant,
        kind=UsageEvent.Kind.RESPONSE,
        natural_key="resp:s1:r1",
        model="gpt-realtime",
        tokens=tokens,
        audio_in_ms=1200,
    )
    assert first.created
    assert not again.created
    assert again.event.pk == first.event.pk
    assert UsageEvent.objects.count() == 1
    assert quota_used(tenant=tenant, metric=Metric.TOKENS) == 150
    assert quota_used(tenant=tenant, metric=Metric.AUDIO_MS) == 1200
    assert quota_used(tenant=tenant, metric=Metric.COST_MICROUSD) > 0


@pytest.mark.django_db
def test_charging_past_a_limit_reports_the_exhausted_metric(tenant, system_actor):
    quota_override_update(tenant=tenant, actor=system_actor, values={"tokens_per_month": 100})
    result = usage_record(
        tenant=tenant,
        kind=UsageEvent.Kind.RESPONSE,
        natural_key="resp:s1:r2",
        model="gpt-realtime",
        tokens=TokenUsage(input_text=120),
    )
    assert result.outcome.exhausted == [Metric.TOKENS]
