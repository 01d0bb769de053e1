"""Masks secret-shaped values wherever text or structured data could leave the process.

Used by the log formatters (on the final formatted line, tracebacks included) and by the audit
recorder (on `details` before they are hashed and stored). Patterns cover the platform's own API
keys and relay tokens, OpenAI ephemeral `ek_` values and API keys, Bearer credentials,
Authorization headers and the browser WebSocket subprotocol that carries a key.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # our keys and relay tokens (rtp_<type>_<random>_<checksum>) and long partial copies of them;
    # the 8-character lookup prefix shown in the console (rtp_sk_AbCd1234) is not a secret
    (re.compile(r"\brtp_([a-z]{2})_[0-9A-Za-z]{16,}(?:_[0-9A-Za-z]{1,6})?"), r"rtp_\1_" + REDACTED),
    # OpenAI ephemeral client secrets
    (re.compile(r"\bek_[0-9A-Za-z_-]{6,}"), "ek_" + REDACTED),
    # OpenAI API keys (sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...)
    (re.compile(r"\bsk-[0-9A-Za-z_-]{12,}"), "sk-" + REDACTED),
    # browser subprotocol carrying a key
    (re.compile(r"openai-insecure-api-key\.[^\s,\"']+"), "openai-insecure-api-key." + REDACTED),
    # Authorization headers in any serialisation: "Authorization: Bearer x", 'authorization': 'x'
    (
        re.compile(r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+|basic\s+)?[^\s\"',}]+"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\bbearer\s+[^\s\"',}]+"), "Bearer " + REDACTED),
    # credentials inside a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
]

SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "api_key",
        "apikey",
        "openai_api_key",
        "secret",
        "client_secret",
        "password",
        "token",
        "access_token",
        "relay_token",
        "upstream_key",
        "plaintext",
        "webhook_secret",
    }
)


# Every pattern above needs one of these; text without any (most text) skips the patterns.
_MAYBE_SECRET = re.compile(r"(?i)rtp_|ek_|sk-|openai-insecure-api-key|authorization|bearer|://")


def redact_text(text: str) -> str:
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any) -> Any:
    """Return a copy of `value` (JSON-like) with sensitive keys and secret-shaped strings masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: (REDACTED if str(key).lower() in SENSITIVE_KEYS and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    return value
