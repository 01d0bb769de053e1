"""Management API for a tenant's own API keys and limits (`/api/v1/…`, API-key authenticated)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from realtime_platform.errors import NotFound
from realtime_platform.http import client_ip
from tenants.api_base import KeyAuthApi
from tenants.models import Scope
from tenants.selectors import api_key_get, api_key_list, tenant_limits
from tenants.services import api_key_revoke


class ApiKeyOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    object = serializers.SerializerMethodField(method_name="get_object_name")
    name = serializers.CharField()
    prefix = serializers.CharField(
        help_text="The first characters of the key; the key itself is never stored."
    )
    last_four = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)

    def get_object_name(self, obj: Any) -> str:
        return "api_key"


class ApiKeyListOutput(serializers.Serializer[Any]):
    object = serializers.CharField(default="list")
    data = ApiKeyOutput(many=True)  # type: ignore[assignment]


class ApiKeyListApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    @extend_schema(operation_id="api_keys_list", responses=ApiKeyListOutput)
    def get(self, request: Request) -> Response:
        keys = api_key_list(tenant=self.principal(request).tenant)
        return Response({"object": "list", "data": ApiKeyOutput(keys, many=True).data})


class ApiKeyDetailApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    @extend_schema(operation_id="api_keys_retrieve", responses=ApiKeyOutput)
    def get(self, request: Request, key_id: int) -> Response:
        api_key = api_key_get(tenant=self.principal(request).tenant, key_id=key_id)
        if api_key is None:
            raise NotFound("api_key")
        return Response(ApiKeyOutput(api_key).data)


class ApiKeyRevokeApi(KeyAuthApi):
    required_scope = Scope.MANAGE_WRITE

    @extend_schema(operation_id="api_keys_revoke", request=None, responses=ApiKeyOutput)
    def post(self, request: Request, key_id: int) -> Response:
        principal = self.principal(request)
        api_key = api_key_get(tenant=principal.tenant, key_id=key_id)
        if api_key is None:
            raise NotFound("api_key")
        api_key = api_key_revoke(
            api_key=api_key, actor=Actor.for_api_key(principal.api_key, ip=client_ip(request.META))
        )
        return Response(ApiKeyOutput(api_key).data)


class TenantOutput(serializers.Serializer[Any]):
    object = serializers.CharField(default="tenant")
    slug = serializers.CharField()
    name = serializers.CharField()
    status = serializers.CharField()
    plan = serializers.CharField()
    limits = serializers.DictField()


class TenantDetailApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    @extend_schema(operation_id="tenant_retrieve", responses=TenantOutput)
    def get(self, request: Request) -> Response:
        tenant = self.principal(request).tenant
        limits = tenant_limits(tenant=tenant)
        data = {
            "object": "tenant",
            "slug": tenant.slug,
            "name": tenant.name,
            "status": tenant.status,
            "plan": tenant.plan.slug,
            "limits": {
                k: (str(v) if v is not None and not isinstance(v, int) else v)
                for k, v in vars(limits).items()
            },
        }
        return Response(TenantOutput(data).data)
