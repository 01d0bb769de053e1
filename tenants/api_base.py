"""Base class of every API-key-authenticated view."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.views import APIView

from tenants.auth import ApiKeyAuthentication, HasScope, KeyPrincipal


class KeyAuthApi(APIView):
    """`required_scope` names the scope a key needs; `self.principal(request)` is the key and tenant."""

    required_scope: str | None = None
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasScope]

    @staticmethod
    def principal(request: Request) -> KeyPrincipal:
        assert isinstance(request.auth, KeyPrincipal)  # HasScope has already refused anything else
        return request.auth
