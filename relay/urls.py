"""Management API routes of the relay, mounted under /api/v1/."""

from django.urls import path

from relay.apis import SessionDetailApi, SessionListApi, SessionTerminateAllApi, SessionTerminateApi

urlpatterns = [
    path("sessions", SessionListApi.as_view(), name="api-sessions"),
    path("sessions/terminate", SessionTerminateAllApi.as_view(), name="api-sessions-terminate"),
    path("sessions/<str:session_id>", SessionDetailApi.as_view(), name="api-session-detail"),
    path("sessions/<str:session_id>/terminate", SessionTerminateApi.as_view(), name="api-session-terminate"),
]
