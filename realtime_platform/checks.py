"""Deploy checks of our own, run by `manage.py check --deploy` next to Django's."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def secrets_configured(app_configs: Any, **kwargs: Any) -> list[Warning]:
    warnings = []
    if not settings.FIELD_ENCRYPTION_KEYS:
        warnings.append(
            Warning(
                "RTP_FIELD_ENCRYPTION_KEYS is not set: stored upstream keys are encrypted with a key "
                "derived from DJANGO_SECRET_KEY, so rotating that key makes them unreadable.",
                id="realtime_platform.W001",
            )
        )
    if not settings.API_KEY_PEPPER:
        warnings.append(
            Warning(
                "RTP_API_KEY_PEPPER is not set: API-key fingerprints depend on DJANGO_SECRET_KEY, so "
                "rotating that key invalidates every API key.",
                id="realtime_platform.W002",
            )
        )
    if not settings.AUDIT_SIGNING_KEY:
        warnings.append(
            Warning(
                "RTP_AUDIT_SIGNING_KEY is not set: audit checkpoints are signed with a key derived from "
                "DJANGO_SECRET_KEY.",
                id="realtime_platform.W003",
            )
        )
    return warnings
