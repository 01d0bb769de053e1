"""Encryption at rest for secrets the platform must be able to use again (a tenant's own OpenAI
key, alert webhook signing secrets). MultiFernet: the first key encrypts, every key decrypts, so
keys rotate by prepending a new one and running `manage.py rotate_encryption_keys`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class DecryptionError(Exception):
    """The ciphertext was made with a key this deploy no longer has, or was altered."""


def _derived_key(label: str) -> bytes:
    digest = hmac.new(settings.SECRET_KEY.encode(), label.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest)


@cache
def _fernet() -> MultiFernet:
    raw_keys = settings.FIELD_ENCRYPTION_KEYS or [_derived_key("rtp-field-encryption").decode()]
    try:
        return MultiFernet([Fernet(key.encode() if isinstance(key, str) else key) for key in raw_keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "RTP_FIELD_ENCRYPTION_KEYS must be comma-separated Fernet keys "
            "(generate one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)"
        ) from exc


def reset_cache() -> None:
    """For tests and key rotation: re-read the keys from settings."""
    _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError("ciphertext cannot be decrypted with the configured keys") from exc


def rotate(ciphertext: str) -> str:
    """Re-encrypt with the newest key (idempotent for values already under it)."""
    try:
        return _fernet().rotate(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError("ciphertext cannot be decrypted with the configured keys") from exc


def keyed_digest(value: str, *, purpose: str) -> str:
    """HMAC-SHA256 of a high-entropy secret under the platform pepper (hex). Fast on purpose:
    API keys carry 190 bits of entropy, so a slow password hash would only add latency."""
    pepper = settings.API_KEY_PEPPER.encode() if settings.API_KEY_PEPPER else _derived_key("rtp-pepper")
    return hmac.new(pepper, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()
