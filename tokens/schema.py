"""OpenAPI pieces of the client-secret API (drf-spectacular): OpenAI's response shape."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from realtime_platform.openapi import error_responses

__all__ = ["ClientSecretCreateResponse", "error_responses"]


class ClientSecretCreateResponse(serializers.Serializer[Any]):
    value = serializers.CharField(
        help_text="The secret: an OpenAI ephemeral key `ek_…` (kind upstream) or a relay token "
        "`rtp_rt_…` (kind relay). Shown once; only a fingerprint is stored."
    )
    expires_at = serializers.IntegerField(
        help_text="Unix seconds after which no new session can open with it."
    )
    session = serializers.JSONField(help_text="The effective session, in OpenAI's session object shape.")
