"""Base classes of every API-key-authenticated view and of their query-string filters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers
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


class QueryFilterSerializer(serializers.Serializer[Any]):
    """Query-string filters of a list view. DRF reads a query string like an HTML form, where an
    empty value (`?status=`) means "not given"; in an API it is a mistake the client should hear
    about, and the OpenAPI schema promises a valid value, so it is refused like any other."""

    def to_internal_value(self, data: Mapping[str, Any]) -> Any:
        for name, _field in self.fields.items():
            values = data.getlist(name) if hasattr(data, "getlist") else [data.get(name)]
            if "" in values:
                raise serializers.ValidationError(
                    {name: [serializers.ErrorDetail("This field may not be blank.", code="blank")]}
                )
        return super().to_internal_value(data)
