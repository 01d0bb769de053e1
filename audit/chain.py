"""What a row of the audit trail commits to, byte for byte.

A row's hash is the SHA-256 (lowercase hex) of

    b"rtp-audit-v1\\n" + field(prev_hash) + field(seq) + field(chain) + field(tenant_id)
                      + field(created_at) + field(actor_type) + field(actor_id) + field(actor_label)
                      + field(action) + field(target_type) + field(target_id) + field(request_id)
                      + field(ip) + field(details)

where field(x) is a 4-byte big-endian length followed by that many bytes, or the length -1
(ff ff ff ff) and nothing else for null, and the bytes are:

- text fields (`prev_hash`, `chain`, `actor_*`, `action`, `target_*`, `request_id`): UTF-8;
- `seq`, `tenant_id`: 8-byte big-endian signed integers (`tenant_id` null on the platform chain);
- `created_at`: microseconds since 2000-01-01T00:00:00Z as an 8-byte big-endian signed integer;
- `ip`: null, or family (2 = IPv4, 3 = IPv6), prefix bits (32 or 128), 0, address length (4 or
  16), then the address bytes;
- `details`: the canonical JSON text stored in the row (keys sorted at every level, no
  whitespace, UTF-8, minimal escaping), exactly as stored.

The first row of a chain has `prev_hash` = 64 zeros. Length-prefixing makes the encoding
unambiguous whatever the fields contain, and it is, byte for byte, what PostgreSQL's binary COPY
sends for these columns: the verifier hashes rows straight off the wire, at about a microsecond
per row, without parsing them. It takes a few lines to re-implement elsewhere (see README).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from audit.models import AuditEvent

ENCODING_VERSION = "rtp-audit-v1"
VERSION_PREFIX = b"rtp-audit-v1\n"
GENESIS_HASH = "0" * 64
PLATFORM_CHAIN = "platform"

# The fields a row's hash commits to, in the order they are encoded.
HASHED_FIELDS = (
    "prev_hash",
    "seq",
    "chain",
    "tenant_id",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "ip",
    "details",
)
# Positions in a row as the verifier reads it: the hashed fields, then the stored hash.
PREV_HASH, SEQ, DETAILS, HASH = 0, 1, 13, 14
INT_FIELDS = frozenset({"seq", "tenant_id"})

_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
_NULL = b"\xff\xff\xff\xff"
_INT64 = 2**63
_pack_len = struct.Struct(">i").pack
_pack_int8 = struct.Struct(">q").pack


def chain_for(tenant_id: int | None) -> str:
    return f"tenant:{tenant_id}" if tenant_id is not None else PLATFORM_CHAIN


def canonical_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def as_aware_datetime(value: Any) -> datetime:
    """A stored timestamp as an aware UTC datetime (SQLite hands back naive UTC, as text or not)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- details ----------------------------------------------------------------------------------


def _clean_text(value: str) -> str:
    # PostgreSQL refuses NUL in text, and lone surrogates are not UTF-8.
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="replace").decode()
    return value


def normalize_details(value: Any) -> Any:
    """`value` (already JSON-native) made encodable everywhere: no NUL or lone surrogates in
    strings, integers beyond 64 bits and non-finite floats as strings, keys as strings."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {_clean_text(str(key)): normalize_details(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return [normalize_details(item) for item in value]
    return _clean_text(str(value))


def canonical_json(value: Any) -> str:
    """Keys sorted at every level, no whitespace: the form `details` is stored and hashed in."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# --- fields -----------------------------------------------------------------------------------


def field_bytes(payload: bytes | None) -> bytes:
    """One field as encoded: its length (-1 for null), then its bytes."""
    return _NULL if payload is None else _pack_len(len(payload)) + payload


_field = field_bytes


def timestamp_payload(value: datetime) -> bytes:
    delta = value - _EPOCH_2000
    return _pack_int8((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def inet_payload(value: str | None) -> bytes | None:
    if not value:
        return None
    address = ipaddress.ip_address(value)
    family, bits = (2, 32) if address.version == 4 else (3, 128)
    packed = address.packed
    return bytes((family, bits, 0, len(packed))) + packed


def field_payloads(fields: Mapping[str, Any]) -> list[bytes | None]:
    """The encoded payload of each hashed field, in `HASHED_FIELDS` order. `created_at` may be a
    datetime or its canonical string, `details` a dict or its stored JSON text."""
    created_at = fields["created_at"]
    if isinstance(created_at, str):
        created_at = parse_timestamp(created_at)
    details = fields["details"]
    if not isinstance(details, str):
        details = canonical_json(details)
    tenant_id = fields["tenant_id"]
    return [
        str(fields["prev_hash"]).encode(),
        _pack_int8(int(fields["seq"])),
        str(fields["chain"]).encode(),
        None if tenant_id is None else _pack_int8(int(tenant_id)),
        timestamp_payload(created_at),
        str(fields["actor_type"]).encode(),
        str(fields["actor_id"]).encode(),
        str(fields["actor_label"]).encode(),
        str(fields["action"]).encode(),
        str(fields["target_type"]).encode(),
        str(fields["target_id"]).encode(),
        str(fields["request_id"]).encode(),
        inet_payload(fields["ip"]),
        details.encode(),
    ]


def encode_payloads(payloads: Sequence[bytes | None]) -> bytes:
    return VERSION_PREFIX + b"".join(_field(payload) for payload in payloads)


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The bytes a row's hash is taken over."""
    return encode_payloads(field_payloads(fields))


def compute_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(fields)).hexdigest()


def row_fields(event: AuditEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in HASHED_FIELDS}


# --- rows as the verifier reads them -----------------------------------------------------------


def wire_row(payloads: Sequence[bytes | None], stored_hash: str) -> bytes:
    """A row in PostgreSQL's binary COPY tuple layout: field count, the hashed fields, the hash."""
    return (
        struct.pack(">h", len(payloads) + 1)
        + b"".join(_field(p) for p in payloads)
        + _field(stored_hash.encode())
    )


def split_wire_row(data: bytes) -> list[bytes | None]:
    """A binary COPY tuple back into its field payloads (None for null)."""
    (count,) = struct.unpack_from(">h", data, 0)
    offset = 2
    out: list[bytes | None] = []
    for _ in range(count):
        (length,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if length < 0:
            out.append(None)
        else:
            out.append(bytes(data[offset : offset + length]))
            offset += length
    return out


def payload_int(payload: bytes | None) -> int | None:
    return None if payload is None or len(payload) != 8 else int(struct.unpack(">q", payload)[0])


def hash_payloads(payloads: Sequence[bytes | None], *, seq: int | None = None) -> str:
    """Hash of a row given its payloads, optionally as if it had sequence number `seq`."""
    values = list(payloads[: DETAILS + 1])
    if seq is not None:
        values[SEQ] = _pack_int8(seq)
    return hashlib.sha256(encode_payloads(values)).hexdigest()
