"""Per-model prices (USD per 1M tokens, Decimal) and the cost of one response's usage.

Defaults are OpenAI's published realtime prices (see ../shared/spec §8); an operator can replace
or extend them with a JSON file named by RTP_PRICE_TABLE_FILE:
`{"gpt-realtime": {"text_in": "4.00", "text_cached_in": "0.40", ...}, ...}`.
Unknown models (new snapshots) fall back to their family, then to the most expensive known
family, so a new model name is never billed at $0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, Decimal
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

MILLION = Decimal(1_000_000)
_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Price:
    text_in: Decimal
    text_cached_in: Decimal
    text_out: Decimal
    audio_in: Decimal
    audio_cached_in: Decimal
    audio_out: Decimal
    image_in: Decimal = Decimal("0")
    image_cached_in: Decimal = Decimal("0")


def _price(*values: str) -> Price:
    return Price(*(Decimal(v) for v in values))


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-realtime": _price("4.00", "0.40", "16.00", "32.00", "0.40", "64.00", "5.00", "0.50"),
    "gpt-realtime-mini": _price("0.60", "0.06", "2.40", "10.00", "0.30", "20.00", "0.80", "0.08"),
    "gpt-4o-realtime-preview": _price("5.00", "2.50", "20.00", "40.00", "2.50", "80.00"),
    "gpt-4o-mini-realtime-preview": _price("0.60", "0.30", "2.40", "10.00", "0.30", "20.00"),
}
FALLBACK_FAMILY = "gpt-4o-realtime-preview"  # the most expensive: unknown models are never under-billed


@cache
def price_table() -> dict[str, Price]:
    table = dict(DEFAULT_PRICES)
    path = getattr(settings, "PRICE_TABLE_FILE", "")
    if path:
        try:
            raw: dict[str, dict[str, Any]] = json.loads(Path(path).read_text())
            names = {f.name for f in fields(Price)}
            for model, entry in raw.items():
                unknown = set(entry) - names
                if unknown:
                    raise ValueError(f"unknown price fields for {model}: {sorted(unknown)}")
                table[model] = Price(**{k: Decimal(str(v)) for k, v in entry.items()})
        except (OSError, ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"RTP_PRICE_TABLE_FILE {path!r} is not a valid price table: {exc}"
            ) from exc
    return table


def price_for(model: str) -> Price:
    table = price_table()
    if model in table:
        return table[model]
    base = _DATE_SUFFIX.sub("", model)
    if base in table:
        return table[base]
    # longest known family name that the model extends, e.g. gpt-realtime-mini-2025-12-15
    families = sorted((name for name in table if base.startswith(name)), key=len, reverse=True)
    return table[families[0]] if families else table[FALLBACK_FAMILY]


@dataclass(frozen=True)
class TokenUsage:
    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_image: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def total(self) -> int:
        return self.input_text + self.input_audio + self.input_image + self.output_text + self.output_audio

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> TokenUsage:
        """From a `response.done` usage object; missing parts count as zero."""
        usage = usage or {}
        inp = usage.get("input_token_details") or {}
        cached = inp.get("cached_tokens_details") or {}
        out = usage.get("output_token_details") or {}

        def n(mapping: dict[str, Any], key: str) -> int:
            value = mapping.get(key) or 0
            return int(value) if isinstance(value, int | float) and value > 0 else 0

        return cls(
            input_text=n(inp, "text_tokens"),
            input_audio=n(inp, "audio_tokens"),
            input_image=n(inp, "image_tokens"),
            cached_text=n(cached, "text_tokens"),
            cached_audio=n(cached, "audio_tokens"),
            cached_image=n(cached, "image_tokens"),
            output_text=n(out, "text_tokens"),
            output_audio=n(out, "audio_tokens"),
        )


def cost_of(model: str, usage: TokenUsage) -> Decimal:
    """USD cost: cached input at the cached rate, the rest of the input at the full rate."""
    p = price_for(model)
    cached_text = min(usage.cached_text, usage.input_text)
    cached_audio = min(usage.cached_audio, usage.input_audio)
    cached_image = min(usage.cached_image, usage.input_image)
    total = (
        (usage.input_text - cached_text) * p.text_in
        + cached_text * p.text_cached_in
        + (usage.input_audio - cached_audio) * p.audio_in
        + cached_audio * p.audio_cached_in
        + (usage.input_image - cached_image) * p.image_in
        + cached_image * p.image_cached_in
        + usage.output_text * p.text_out
        + usage.output_audio * p.audio_out
    )
    return (total / MILLION).quantize(Decimal("0.00000001"))


def to_microusd(cost: Decimal) -> int:
    """Quota counters are integers; round up so fractions of a micro-dollar are never free."""
    return int((cost * MILLION).to_integral_value(rounding=ROUND_CEILING))
