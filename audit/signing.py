"""HMAC-SHA256 signatures of checkpoints and export manifests.

The key is settings.AUDIT_SIGNING_KEY (RTP_AUDIT_SIGNING_KEY), or one derived from SECRET_KEY
as realtime_platform/crypto.py does for its keys. Keys that signed older checkpoints may be kept
in settings.AUDIT_SIGNING_KEYS_PREVIOUS, so checkpoints stay verifiable after a rotation; each
signature records the `key_id` (a short SHA-256 of the key, which reveals nothing about it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson
from django.conf import settings


def _current_key() -> bytes:
    if settings.AUDIT_SIGNING_KEY:
        return str(settings.AUDIT_SIGNING_KEY).encode()
    return hmac.new(settings.SECRET_KEY.encode(), b"rtp-audit-signing", hashlib.sha256).digest()


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"rtp-audit-key-id:" + key).hexdigest()[:12]


def current_key_id() -> str:
    return key_id_of(_current_key())


def _keys() -> dict[str, bytes]:
    keys = [_current_key()]
    keys.extend(str(k).encode() for k in getattr(settings, "AUDIT_SIGNING_KEYS_PREVIOUS", []) if k)
    return {key_id_of(key): key for key in keys}


def sign(message: bytes) -> tuple[str, str]:
    """(key_id, signature hex) of `message` under the current key."""
    key = _current_key()
    return key_id_of(key), hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(message: bytes, *, key_id: str, signature: str) -> bool | None:
    """True: genuine. False: altered or forged. None: signed with a key this deploy lacks."""
    key = _keys().get(key_id)
    if key is None:
        return None
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def checkpoint_message(
    *, chain: str, seq: int, hash: str, created_at: str, kind: str, prev_signature: str
) -> bytes:
    return "\n".join(
        ["rtp-audit-checkpoint-v1", chain, str(seq), hash, created_at, kind, prev_signature]
    ).encode()


def document_message(document: Mapping[str, Any]) -> bytes:
    """What a manifest or trailer signature covers: the document without its `signature`, as
    sorted compact JSON."""
    body = {key: value for key, value in document.items() if key != "signature"}
    return b"rtp-audit-document-v1\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
