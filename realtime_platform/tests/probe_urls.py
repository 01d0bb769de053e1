"""A URL conf with probe views: ones that fail on purpose (to prove failures never leak a stack
trace) and one that parses a JSON body (to prove parse errors and size caps)."""

from django.urls import include, path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class CrashApi(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("secret internals: rtp_sk_" + "A" * 32 + "_AAAAAA")


class EchoApi(APIView):
    authentication_classes: list[type] = []
    permission_classes: list[type] = []

    def post(self, request: Request) -> Response:
        return Response({"received": request.data})


def crash_plain_view(request):
    raise ValueError("boom in a plain Django view")


urlpatterns = [
    path("api/v1/_crash", CrashApi.as_view()),
    path("api/v1/_echo", EchoApi.as_view()),
    path("v1/_crash_plain", crash_plain_view),
    path("", include("realtime_platform.urls")),
]
