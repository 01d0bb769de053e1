"""Small HTTP helpers shared by views, consumers and the admin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings


def client_ip(meta: Mapping[str, Any]) -> str | None:
    """The client's address. X-Forwarded-For is trusted only when DJANGO_BEHIND_PROXY is on."""
    if settings.SECURE_PROXY_SSL_HEADER and meta.get("HTTP_X_FORWARDED_FOR"):
        return str(meta["HTTP_X_FORWARDED_FOR"]).split(",")[0].strip() or None
    return meta.get("REMOTE_ADDR") or None
