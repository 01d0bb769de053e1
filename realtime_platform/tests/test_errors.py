from __future__ import annotations

import json
import logging

import pytest
from rest_framework import serializers

from realtime_platform.errors import validation_error_body


class Inner(serializers.Serializer):
    seconds = serializers.IntegerField(min_value=10, max_value=7200)


class Outer(serializers.Serializer):
    expires_after = Inner()
    tools = serializers.ListField(child=serializers.DictField())


def first_error(data):
    serializer = Outer(data=data)
    assert not serializer.is_valid()
    return validation_error_body(
        serializer.errors, serializer.errors and serializer._errors and _codes(serializer)
    )


def _codes(serializer):
    from rest_framework.exceptions import ValidationError

    return ValidationError(serializer.errors).get_codes()


def test_nested_validation_error_names_the_dotted_param():
    body = first_error({"expires_after": {"seconds": 5}, "tools": []})
    assert body["error"]["param"] == "expires_after.seconds"
    assert body["error"]["code"] == "integer_below_min_value"
    assert body["error"]["type"] == "invalid_request_error"
    assert "expires_after.seconds" in body["error"]["message"]


def test_missing_field_is_missing_required_parameter():
    body = first_error({"expires_after": {}, "tools": []})
    assert body["error"] == {
        "message": "Missing required parameter: 'expires_after.seconds'.",
        "type": "invalid_request_error",
        "param": "expires_after.seconds",
        "code": "missing_required_parameter",
    }


def test_list_item_errors_carry_their_index():
    body = first_error({"expires_after": {"seconds": 60}, "tools": [{}, "nope"]})
    assert body["error"]["param"] == "tools.1"


@pytest.mark.urls("realtime_platform.tests.probe_urls")
@pytest.mark.django_db
def test_malformed_json_is_400_invalid_json(api_client):
    response = api_client.post("/api/v1/_echo", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.urls("realtime_platform.tests.probe_urls")
@pytest.mark.django_db
def test_body_over_the_cap_is_413_and_under_it_is_read_intact(api_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    too_big = api_client.post(
        "/api/v1/_echo", data=json.dumps({"x": "y" * 5000}), content_type="application/json"
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"
    fits = api_client.post(
        "/api/v1/_echo", data=json.dumps({"x": "y" * 900}), content_type="application/json"
    )
    assert fits.status_code == 200
    assert fits.json() == {"received": {"x": "y" * 900}}


@pytest.mark.django_db
def test_unknown_api_url_is_an_openai_shaped_404(api_client, settings):
    for debug in (False, True):
        settings.DEBUG = debug
        response = api_client.get("/v1/no/such/thing")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_url"


@pytest.mark.django_db
def test_wrong_method_is_405_in_openai_shape(key_client):
    response = key_client.delete("/api/v1/api_keys")
    assert response.status_code == 405
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.urls("realtime_platform.tests.probe_urls")
@pytest.mark.django_db
def test_unhandled_errors_become_500_without_internals(api_client, caplog):
    caplog.set_level(logging.ERROR)
    for url in ("/api/v1/_crash", "/v1/_crash_plain"):
        response = api_client.get(url, HTTP_X_REQUEST_ID="trace-123")
        assert response.status_code == 500
        body = response.json()
        assert body["error"]["type"] == "server_error"
        assert "trace-123" in body["error"]["message"]
        assert "Traceback" not in response.content.decode()
        assert "secret internals" not in response.content.decode()
        assert "boom" not in response.content.decode()
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.django_db
def test_request_id_is_echoed_or_minted(api_client):
    echoed = api_client.get("/healthz", HTTP_X_REQUEST_ID="client-abc.1")
    assert echoed["x-request-id"] == "client-abc.1"
    minted = api_client.get("/healthz", HTTP_X_REQUEST_ID="bad id with spaces\n")
    assert minted["x-request-id"].startswith("req_")
    assert len(minted["x-request-id"]) == 36


def test_every_error_class_maps_to_its_openai_status_and_type():
    from django_ratelimit.exceptions import Ratelimited
    from rest_framework import exceptions as drf

    from realtime_platform.errors import (
        AuthenticationFailed,
        Conflict,
        NotFound,
        PermissionDenied,
        QuotaExceeded,
        RateLimited,
        ServiceUnavailable,
        Unprocessable,
        as_api_error,
    )

    cases = [
        (drf.ValidationError({"seconds": ["bad"]}), 400, "invalid_request_error"),
        (drf.ParseError(), 400, "invalid_request_error"),
        (AuthenticationFailed("no"), 401, "invalid_request_error"),
        (drf.NotAuthenticated(), 401, "invalid_request_error"),
        (PermissionDenied("no"), 403, "invalid_request_error"),
        (NotFound("thing"), 404, "invalid_request_error"),
        (drf.MethodNotAllowed("DELETE"), 405, "invalid_request_error"),
        (Conflict("busy"), 409, "invalid_request_error"),
        (Unprocessable("other body"), 422, "invalid_request_error"),
        (RateLimited("slow down", retry_after=3), 429, "requests"),
        (Ratelimited(), 429, "requests"),  # django-ratelimit's decorator raises this
        (QuotaExceeded("used up"), 429, "insufficient_quota"),
        (ServiceUnavailable("later"), 503, "server_error"),
    ]
    for exc, status, error_type in cases:
        error = as_api_error(exc)
        assert error is not None, exc
        assert (error.status, error.error_type) == (status, error_type), exc
        assert set(error.as_body()["error"]) == {"message", "type", "param", "code"}
    assert as_api_error(RuntimeError("bug")) is None  # answered as a logged 500
    assert as_api_error(Ratelimited()).headers["Retry-After"] == "60"
