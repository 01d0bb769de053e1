"""The platform's secret formats: API keys (`rtp_sk_…`) and relay tokens (`rtp_rt_…`).

    rtp_<type>_<32 base62 chars: ~190 random bits>_<6 base62 chars: CRC32 of what precedes>

The fixed prefix lets secret scanners find leaked keys; the checksum lets the server (and the
scanners) reject typos and random look-alikes before any database lookup. The database keeps the
lookup prefix (`rtp_sk_` + the first 8 random characters, shown in the console), the last four
characters and an HMAC-SHA256 fingerprint; never the secret.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass
from enum import StrEnum

from realtime_platform.crypto import keyed_digest

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
LOOKUP_LENGTH = 8

KEY_PATTERN = re.compile(r"\brtp_(sk|rt)_([0-9A-Za-z]{32})_([0-9A-Za-z]{6})\b")


class KeyType(StrEnum):
    API_KEY = "sk"
    RELAY_TOKEN = "rt"


def _base62(number: int, width: int) -> str:
    chars = []
    while number:
        number, rem = divmod(number, 62)
        chars.append(BASE62[rem])
    return "".join(reversed(chars)).rjust(width, "0")


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


@dataclass(frozen=True)
class GeneratedKey:
    plaintext: str
    prefix: str
    last_four: str
    fingerprint: str


@dataclass(frozen=True)
class ParsedKey:
    key_type: KeyType
    prefix: str
    plaintext: str


def generate(key_type: KeyType) -> GeneratedKey:
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LENGTH))
    body = f"rtp_{key_type.value}_{random_part}"
    plaintext = f"{body}_{_checksum(body)}"
    return GeneratedKey(
        plaintext=plaintext,
        prefix=f"rtp_{key_type.value}_{random_part[:LOOKUP_LENGTH]}",
        last_four=plaintext[-4:],
        fingerprint=fingerprint(plaintext),
    )


def parse(raw: str) -> ParsedKey | None:
    """The key's type and lookup prefix, or None when it is malformed or its checksum is wrong."""
    match = KEY_PATTERN.fullmatch(raw)
    if match is None:
        return None
    type_code, random_part, checksum = match.groups()
    body = f"rtp_{type_code}_{random_part}"
    if _checksum(body) != checksum:
        return None
    return ParsedKey(
        key_type=KeyType(type_code), prefix=f"rtp_{type_code}_{random_part[:LOOKUP_LENGTH]}", plaintext=raw
    )


def fingerprint(plaintext: str) -> str:
    return keyed_digest(plaintext, purpose="rtp-key")
