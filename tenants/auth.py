"""API-key authentication, shared by DRF views and Channels consumers.

Order of checks (each a distinct, OpenAI-shaped error):
  no credential → 401 missing_api_key; wrong format or checksum → 401 invalid_api_key, decided
  before any database lookup; unknown prefix or fingerprint mismatch → 401 invalid_api_key;
  revoked → 401 api_key_revoked; expired → 401 api_key_expired; tenant suspended → 403
  tenant_suspended; missing scope → 403 insufficient_scope.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from realtime_platform.context import tenant_id_var
from realtime_platform.errors import AuthenticationFailed, PermissionDenied
from tenants import keys
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_touch

MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Send it in an Authorization header using Bearer auth "
    "(Authorization: Bearer YOUR_KEY)."
)
INCORRECT_KEY_MESSAGE = (
    "Incorrect API key provided. Keys are shown once, when they are created, in the console."
)


@dataclass(frozen=True)
class KeyPrincipal:
    """An authenticated API key and its tenant (DRF's `request.auth`)."""

    api_key: ApiKey
    tenant: Tenant

    @property
    def scopes(self) -> frozenset[str]:
        return frozenset(self.api_key.scopes)

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(
                f"This API key lacks the '{scope}' scope needed for this operation.",
                code="insufficient_scope",
            )


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; '' when the header has another form."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def api_key_authenticate(
    raw: str | None, *, now: datetime | None = None, related: tuple[str, ...] = ()
) -> KeyPrincipal:
    """`related`: extra `select_related` paths from the key (e.g. "tenant__plan"), so a caller
    that needs them next gets them in the same query."""
    if raw is None:
        raise AuthenticationFailed(MISSING_KEY_MESSAGE, code="missing_api_key")
    parsed = keys.parse(raw)
    if parsed is None:
        raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
    if parsed.key_type is keys.KeyType.RELAY_TOKEN:
        raise AuthenticationFailed(
            "Relay tokens are accepted only by the realtime WebSocket (/v1/realtime), not by REST endpoints."
        )
    api_key = ApiKey.objects.select_related("tenant", *related).filter(prefix=parsed.prefix).first()
    if api_key is None or not hmac.compare_digest(api_key.fingerprint, keys.fingerprint(raw)):
        raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
    now = now or timezone.now()
    if api_key.revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise AuthenticationFailed("This API key has expired.", code="api_key_expired")
    if not api_key.tenant.is_active:
        raise PermissionDenied(
            "This tenant is suspended. Contact the platform operator.", code="tenant_suspended"
        )
    api_key_touch(api_key=api_key, now=now)
    tenant_id_var.set(str(api_key.tenant_id))
    return KeyPrincipal(api_key=api_key, tenant=api_key.tenant)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, KeyPrincipal] | None:
        token = bearer_token(request.META.get("HTTP_AUTHORIZATION"))
        if token is None:
            return None  # HasScope answers 401 missing_api_key
        if token == "":
            raise AuthenticationFailed(INCORRECT_KEY_MESSAGE)
        return AnonymousUser(), api_key_authenticate(token)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="realtime-platform"'


class HasScope(BasePermission):
    """Requires an authenticated key carrying the view's `required_scope`."""

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.auth
        if not isinstance(principal, KeyPrincipal):
            raise NotAuthenticated()
        scope = getattr(view, "required_scope", None)
        if scope is None:
            raise PermissionDenied("This endpoint is not available to API keys.")
        principal.require_scope(scope)
        return True
