"""A probe view for the embedded-run test: a sync Django view calling the upstream over HTTP."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from upstream.client import UpstreamClient, platform_api_key
from upstream.errors import UpstreamError


def mint_probe(request: HttpRequest) -> JsonResponse:
    client = UpstreamClient(api_key=platform_api_key(), read_timeout=5)
    try:
        result = client.create_client_secret_sync(
            body={"session": {"type": "realtime", "model": "gpt-realtime"}}
        )
    except UpstreamError as exc:
        return JsonResponse({"error": str(exc), "status": exc.status}, status=502)
    return JsonResponse({"prefix": result.value[:3], "model": result.session["model"]})


urlpatterns = [path("probe/mint", mint_probe)]
