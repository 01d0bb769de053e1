"""The client-secret API: OpenAI's `POST /v1/realtime/client_secrets`, and the tenant management
API for secrets under `/api/v1/client_secrets` (list, retrieve, revoke, issuance usage)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from realtime_platform.errors import BadRequest, NotFound
from realtime_platform.http import client_ip
from tenants.api_base import KeyAuthApi, QueryFilterSerializer
from tenants.models import Scope, Tenant
from tenants.selectors import tenant_limits
from tokens.models import ClientSecret
from tokens.openai_schema import ClientSecretCreateRequest
from tokens.schema import ClientSecretCreateResponse, error_responses
from tokens.selectors import client_secret_get, client_secret_list, client_secret_page, issuance_summary
from tokens.services import Issued, client_secret_issue, client_secret_revoke


def issued_response(issued: Issued) -> HttpResponse:
    """The exact bytes the service built (an idempotent replay is byte-for-byte the first answer)."""
    response = HttpResponse(issued.body, status=issued.status, content_type="application/json")
    for name, value in issued.headers.items():
        response[name] = value
    return response


class ClientSecretCreateApi(KeyAuthApi):
    """OpenAI-compatible: the unmodified `openai` SDK calls this with `base_url=http://HOST/v1`.

    Under daphne this URL is normally answered by the fast path in `tokens/asgi.py`, which calls
    the same services; this view serves it with RTP_ISSUANCE_FAST_PATH=false, under WSGI, and in
    tests that use Django's test client."""

    required_scope = Scope.SECRETS_CREATE

    @extend_schema(
        operation_id="realtime_client_secrets_create",
        summary="Create a realtime client secret",
        description=(
            "OpenAI's request and response, unchanged. The tenant's session policy is applied, "
            "the daily secret quota is reserved exactly, and the answer is either an OpenAI "
            "ephemeral key (`ek_…`, kind `upstream`) or a relay token (`rtp_rt_…`, kind `relay`) "
            "for this platform's `/v1/realtime` WebSocket. Send `Idempotency-Key` to make retries "
            "safe. Every response carries `x-ratelimit-*` headers."
        ),
        request=ClientSecretCreateRequest,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                # what idempotency_key_from_header accepts; no blank at either end, which HTTP strips
                {"type": "string", "pattern": r"^[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?$"},
                OpenApiParameter.HEADER,
                description="Up to 255 printable characters; the same key and body within 24 hours "
                "returns the first response.",
            )
        ],
        responses={
            200: ClientSecretCreateResponse,
            **error_responses(400, 401, 403, 409, 413, 422, 429, 502, 503),
        },
        tags=["OpenAI-compatible"],
    )
    def post(self, request: Request) -> HttpResponse:
        issued = client_secret_issue(
            principal=self.principal(request),
            body=request.body,
            idempotency_key=request.headers.get("Idempotency-Key"),
            ip=client_ip(request.META),
        )
        return issued_response(issued)


# --- Management -------------------------------------------------------------------------------


def effective_status(secret: ClientSecret, now: datetime) -> str:
    """The sweep marks expired secrets every 30 s; reads do not wait for it."""
    return secret.status_at(now)


class ClientSecretOutput(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.SerializerMethodField(method_name="get_object_name")
    kind = serializers.ChoiceField(choices=ClientSecret.Kind.choices)
    status = serializers.SerializerMethodField()
    last_four = serializers.CharField(help_text="The secret itself is never stored, only a fingerprint.")
    model = serializers.CharField()
    session = serializers.JSONField(source="session_config", help_text="The effective session config.")
    api_key_id = serializers.IntegerField(allow_null=True)
    api_key_prefix = serializers.SerializerMethodField()
    single_use = serializers.BooleanField()
    max_session_seconds = serializers.IntegerField(allow_null=True)
    cost_ceiling_usd = serializers.DecimalField(max_digits=10, decimal_places=4, allow_null=True)
    upstream_session_id = serializers.CharField()
    request_id = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)

    def get_object_name(self, obj: ClientSecret) -> str:
        return "client_secret"

    def get_status(self, obj: ClientSecret) -> str:
        return effective_status(obj, self.context.get("now") or timezone.now())

    def get_api_key_prefix(self, obj: ClientSecret) -> str | None:
        return obj.api_key.prefix if obj.api_key is not None else None


class ClientSecretListOutput(serializers.Serializer[Any]):
    object = serializers.CharField(default="list")
    data = ClientSecretOutput(many=True)  # type: ignore[assignment]
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


class ClientSecretListApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    class FilterSerializer(QueryFilterSerializer):
        status = serializers.ChoiceField(choices=ClientSecret.Status.choices, required=False)
        kind = serializers.ChoiceField(choices=ClientSecret.Kind.choices, required=False)
        api_key = serializers.IntegerField(  # max: a larger id overflows SQLite's integers (a 500)
            required=False, min_value=1, max_value=2**63 - 1, help_text="Issued by this API key id."
        )
        model = serializers.CharField(required=False, max_length=100)
        created_after = serializers.DateTimeField(required=False)
        created_before = serializers.DateTimeField(required=False)
        limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)
        after = serializers.CharField(
            required=False, max_length=32, help_text="Cursor: the `last_id` of the previous page."
        )

    @extend_schema(
        operation_id="client_secrets_list",
        summary="List client secrets, newest first",
        parameters=[FilterSerializer],
        responses={200: ClientSecretListOutput, **error_responses(400, 401, 403)},
        tags=["Client secrets"],
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        params = dict(filters.validated_data)
        limit, after = params.pop("limit"), params.pop("after", None)
        if "api_key" in params:
            params["api_key_id"] = params.pop("api_key")
        tenant = self.principal(request).tenant
        page = client_secret_page(
            client_secret_list(tenant=tenant, **params), tenant=tenant, limit=limit, after=after
        )
        if page is None:
            raise BadRequest(f"No such client secret: '{after}'.", code="invalid_value", param="after")
        data = ClientSecretOutput(page.items, many=True, context={"now": timezone.now()}).data
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": page.items[0].pk if page.items else None,
                "last_id": page.items[-1].pk if page.items else None,
                "has_more": page.has_more,
            }
        )


def _secret_or_404(tenant: Tenant, secret_id: str) -> ClientSecret:
    """Unknown and another tenant's id give the same 404."""
    secret = client_secret_get(tenant=tenant, secret_id=secret_id)
    if secret is None:
        raise NotFound("client secret")
    return secret


class ClientSecretDetailApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    @extend_schema(
        operation_id="client_secrets_retrieve",
        summary="Retrieve a client secret",
        responses={200: ClientSecretOutput, **error_responses(401, 403, 404)},
        tags=["Client secrets"],
    )
    def get(self, request: Request, secret_id: str) -> Response:
        secret = _secret_or_404(self.principal(request).tenant, secret_id)
        return Response(ClientSecretOutput(secret).data)


class ClientSecretRevokeApi(KeyAuthApi):
    required_scope = Scope.MANAGE_WRITE

    @extend_schema(
        operation_id="client_secrets_revoke",
        summary="Revoke a client secret",
        description=(
            "Idempotent. A revoked relay token can no longer open a session. OpenAI cannot revoke "
            "its own ephemeral keys, so an `upstream` secret stays usable at OpenAI until it expires."
        ),
        request=None,
        responses={200: ClientSecretOutput, **error_responses(401, 403, 404)},
        tags=["Client secrets"],
    )
    def post(self, request: Request, secret_id: str) -> Response:
        principal = self.principal(request)
        secret = _secret_or_404(principal.tenant, secret_id)
        secret = client_secret_revoke(
            secret=secret, actor=Actor.for_api_key(principal.api_key, ip=client_ip(request.META))
        )
        return Response(ClientSecretOutput(secret).data)


class IssuanceDay(serializers.Serializer[Any]):
    date = serializers.DateField()
    issued = serializers.IntegerField()
    relay = serializers.IntegerField()
    upstream = serializers.IntegerField()


class IssuanceToday(serializers.Serializer[Any]):
    reserved = serializers.IntegerField(help_text="Secrets counted against today's (UTC) quota.")
    limit = serializers.IntegerField(allow_null=True, help_text="Null: unlimited.")
    remaining = serializers.IntegerField(allow_null=True)


class IssuanceUsageOutput(serializers.Serializer[Any]):
    object = serializers.CharField(default="client_secret.usage")
    today = IssuanceToday()
    days = IssuanceDay(many=True)
    by_status = serializers.DictField(child=serializers.IntegerField())


class IssuanceUsageApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    class FilterSerializer(QueryFilterSerializer):
        days = serializers.IntegerField(required=False, min_value=1, max_value=90, default=7)

    @extend_schema(
        operation_id="client_secrets_usage",
        summary="Issuance usage of this organization",
        parameters=[FilterSerializer],
        responses={200: IssuanceUsageOutput, **error_responses(400, 401, 403)},
        tags=["Client secrets"],
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        principal = self.principal(request)
        summary = issuance_summary(tenant=principal.tenant, days=filters.validated_data["days"])
        limit = tenant_limits(tenant=principal.tenant).secrets_per_day
        reserved = summary["today_reserved"]
        return Response(
            {
                "object": "client_secret.usage",
                "today": {
                    "reserved": reserved,
                    "limit": limit,
                    "remaining": None if limit is None else max(0, limit - reserved),
                },
                "days": summary["days"],
                "by_status": summary["by_status"],
            }
        )
