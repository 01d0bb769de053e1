from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured

from usage import pricing
from usage.pricing import TokenUsage, cost_of, price_for, to_microusd

# the usage object of the OpenAPI spec's captured response.done
CAPTURED_USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def test_usage_object_is_read_per_modality():
    usage = TokenUsage.from_openai(CAPTURED_USAGE)
    assert usage.total == 253
    assert (usage.input_text, usage.cached_text, usage.input_audio) == (119, 64, 13)
    assert (usage.output_text, usage.output_audio) == (30, 91)


def test_cost_charges_cached_input_at_the_cached_rate():
    cost = cost_of("gpt-realtime", TokenUsage.from_openai(CAPTURED_USAGE))
    # (55*4 + 64*0.4 + 13*32 + 30*16 + 91*64) / 1e6
    expected = (Decimal(55) * 4 + Decimal(64) * Decimal("0.4") + 13 * 32 + 30 * 16 + 91 * 64) / Decimal(10**6)
    assert cost == expected.quantize(Decimal("0.00000001"))
    assert isinstance(cost, Decimal)


def test_dated_snapshots_and_unknown_models_are_never_free():
    assert price_for("gpt-realtime-2025-08-28") == price_for("gpt-realtime")
    assert price_for("gpt-realtime-mini-2025-12-15") == price_for("gpt-realtime-mini")
    assert price_for("totally-new-model") == price_for(pricing.FALLBACK_FAMILY)
    assert cost_of("totally-new-model", TokenUsage(output_audio=1000)) > 0


def test_microusd_rounds_up():
    assert to_microusd(Decimal("0.0000001")) == 1
    assert to_microusd(Decimal("1.5")) == 1_500_000


def test_operator_price_table_overrides_defaults(tmp_path, settings):
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps(
            {
                "my-model": {
                    "text_in": "1",
                    "text_cached_in": "0.1",
                    "text_out": "2",
                    "audio_in": "3",
                    "audio_cached_in": "0.3",
                    "audio_out": "4",
                }
            }
        )
    )
    settings.PRICE_TABLE_FILE = str(table)
    pricing.price_table.cache_clear()
    try:
        assert cost_of("my-model", TokenUsage(output_audio=1_000_000)) == Decimal("4")
        table.write_text(json.dumps({"my-model": {"bogus": "1"}}))
        pricing.price_table.cache_clear()
        with pytest.raises(ImproperlyConfigured):
            pricing.price_table()
    finally:
        settings.PRICE_TABLE_FILE = ""
        pricing.price_table.cache_clear()
