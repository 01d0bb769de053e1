"""Management API for a tenant's relayed sessions (`/api/v1/sessions…`, API-key authenticated):
list live (or past) sessions, read one, terminate one or all. Another tenant's session id is a 404."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit.actors import Actor
from realtime_platform.errors import NotFound
from realtime_platform.http import client_ip
from realtime_platform.openapi import error_responses
from relay.models import RealtimeSession
from relay.selectors import realtime_session_get, realtime_session_list
from relay.services import relay_session_terminate, relay_sessions_terminate_all
from tenants.api_base import KeyAuthApi, QueryFilterSerializer
from tenants.models import Scope
from tenants.selectors import api_key_get


class SessionOutput(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.SerializerMethodField(method_name="get_object_name")
    status = serializers.CharField()
    model = serializers.CharField()
    credential = serializers.CharField()
    api_key_id = serializers.IntegerField(allow_null=True)
    api_key_prefix = serializers.SerializerMethodField()
    client_secret_id = serializers.CharField(allow_null=True)
    client_ip = serializers.CharField(allow_null=True)
    started_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(allow_null=True)
    end_reason = serializers.CharField()
    close_code = serializers.IntegerField(allow_null=True)
    frames_in = serializers.IntegerField()
    frames_out = serializers.IntegerField()
    bytes_in = serializers.IntegerField()
    bytes_out = serializers.IntegerField()
    audio_in_ms = serializers.IntegerField()
    audio_out_ms = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=16, decimal_places=8)

    def get_object_name(self, obj: Any) -> str:
        return "relay.session"

    def get_api_key_prefix(self, obj: RealtimeSession) -> str | None:
        return obj.api_key.prefix if obj.api_key_id and obj.api_key else None


class SessionListOutput(serializers.Serializer[Any]):
    object = serializers.CharField(default="list")
    data = SessionOutput(many=True)  # type: ignore[assignment]


class SessionListApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    class FilterSerializer(QueryFilterSerializer):
        status = serializers.ChoiceField(choices=[*RealtimeSession.Status.values, "all"], default="active")
        limit = serializers.IntegerField(min_value=1, max_value=100, default=100)

    @extend_schema(operation_id="sessions_list", parameters=[FilterSerializer], responses=SessionListOutput)
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        status = filters.validated_data["status"]
        sessions = realtime_session_list(
            tenant=self.principal(request).tenant,
            status=None if status == "all" else status,
            limit=filters.validated_data["limit"],
        )
        return Response({"object": "list", "data": SessionOutput(sessions, many=True).data})


class SessionDetailApi(KeyAuthApi):
    required_scope = Scope.MANAGE_READ

    @extend_schema(operation_id="sessions_retrieve", responses=SessionOutput)
    def get(self, request: Request, session_id: str) -> Response:
        session = realtime_session_get(tenant=self.principal(request).tenant, session_id=session_id)
        if session is None:
            raise NotFound("session")
        return Response(SessionOutput(session).data)


class SessionTerminateApi(KeyAuthApi):
    """Close one live session, wherever it runs (within about a second). Ended sessions are left as
    they are; the answer is the session as it stands when the request is accepted."""

    required_scope = Scope.MANAGE_WRITE

    @extend_schema(operation_id="sessions_terminate", request=None, responses=SessionOutput)
    def post(self, request: Request, session_id: str) -> Response:
        principal = self.principal(request)
        session = realtime_session_get(tenant=principal.tenant, session_id=session_id)
        if session is None:
            raise NotFound("session")
        session = relay_session_terminate(
            session=session, actor=Actor.for_api_key(principal.api_key, ip=client_ip(request.META))
        )
        return Response(SessionOutput(session).data)


class SessionTerminateAllApi(KeyAuthApi):
    """Close every live session of the tenant, or of one of its API keys."""

    required_scope = Scope.MANAGE_WRITE

    class InputSerializer(serializers.Serializer[Any]):
        api_key_id = serializers.IntegerField(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer[Any]):
        object = serializers.CharField(default="relay.session.termination")
        terminated = serializers.IntegerField(help_text="Live sessions told to close.")

    @extend_schema(
        operation_id="sessions_terminate_all",
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(404)},  # 404: api_key_id not the tenant's
    )
    def post(self, request: Request) -> Response:
        principal = self.principal(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key_id = data.validated_data.get("api_key_id")
        if api_key_id is not None and api_key_get(tenant=principal.tenant, key_id=api_key_id) is None:
            raise NotFound("api_key")
        count = relay_sessions_terminate_all(
            tenant=principal.tenant,
            actor=Actor.for_api_key(principal.api_key, ip=client_ip(request.META)),
            api_key_id=api_key_id,
        )
        return Response(
            self.OutputSerializer({"object": "relay.session.termination", "terminated": count}).data
        )
