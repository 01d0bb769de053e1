"""Project-level views: the landing page and the error handlers for URLs no app owns."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults

from realtime_platform.errors import api_not_found, is_api_path, server_error_body


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "index.html")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return api_not_found(request)
    return defaults.page_not_found(request, exception or Exception("not found"))


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(server_error_body(), status=500)
    return defaults.server_error(request)
