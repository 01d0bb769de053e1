"""The ASGI fast path (tokens/asgi.py) that serves POST /v1/realtime/client_secrets under daphne:
the same answers as the DRF view, through the real ASGI application."""

from __future__ import annotations

import json

import httpx
import pytest
from asgiref.sync import async_to_sync

from audit.models import AuditEvent
from tokens.asgi import shutdown_db_threads
from tokens.models import ClientSecret
from tokens.tests.conftest import issue

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/v1/realtime/client_secrets"
BODY = {"session": {"type": "realtime", "instructions": "Be brief."}}


@pytest.fixture
def asgi_post():
    """POST to the whole ASGI application (Channels router, fast path, Django) in-process."""
    from realtime_platform.asgi import application

    async def call(method, path, content=b"", headers=None):
        transport = httpx.ASGITransport(app=application, client=("198.51.100.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.request(method, path, content=content, headers=headers or {})

    def post(body=None, key=None, path=URL, method="POST", **headers):
        content = body if isinstance(body, bytes) else json.dumps(body if body is not None else BODY).encode()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return async_to_sync(call)(method, path, content, headers)

    yield post
    shutdown_db_threads()


def test_issues_a_relay_secret_with_the_request_id_and_security_headers(asgi_post, api_key):
    response = asgi_post(key=api_key.plaintext, **{"X-Request-Id": "trace-fast-1"})
    assert response.status_code == 200
    body = response.json()
    assert body["value"].startswith("rtp_rt_")
    assert response.headers["x-request-id"] == "trace-fast-1"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-ratelimit-remaining-requests"] == "599"
    secret = ClientSecret.objects.get()
    assert secret.request_id == "trace-fast-1"
    event = AuditEvent.objects.get(action="secret.issued")
    assert (event.request_id, event.ip) == ("trace-fast-1", "198.51.100.7")
    assert event.tenant_id == api_key.api_key.tenant_id


@pytest.mark.parametrize(
    ("body", "key_kind", "status", "code"),
    [
        (BODY, None, 401, "missing_api_key"),
        (BODY, "garbage", 401, "invalid_api_key"),
        ({"session": {"type": "realtime", "voice": "x"}}, "good", 400, "unknown_parameter"),
        (b"{nope", "good", 400, "invalid_json"),
        (BODY, "reader", 403, "insufficient_scope"),
    ],
)
def test_errors_match_the_drf_view_exactly(asgi_post, api_key, read_only_key, body, key_kind, status, code):
    from rest_framework.test import APIClient

    key = {
        None: None,
        "garbage": "rtp_sk_garbage",
        "good": api_key.plaintext,
        "reader": read_only_key.plaintext,
    }[key_kind]
    fast = asgi_post(body, key=key)
    client = APIClient()
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    slow = issue(client, body)
    assert fast.status_code == slow.status_code == status
    assert fast.json() == slow.json()
    assert fast.json()["error"]["code"] == code


def test_an_authorization_header_that_is_not_bearer_is_401(asgi_post):
    response = asgi_post(BODY, Authorization="Basic dXNlcjpwYXNz")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_body_over_the_cap_is_413_before_anything_else(asgi_post, api_key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = asgi_post({"session": {"type": "realtime", "instructions": "x" * 2000}}, key=api_key.plaintext)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["x-request-id"].startswith("req_")


def test_a_host_outside_allowed_hosts_is_refused(asgi_post, api_key, settings):
    settings.ALLOWED_HOSTS = ["rtp.example.com"]
    response = asgi_post(key=api_key.plaintext)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_host"
    assert not ClientSecret.objects.exists()


def test_plain_http_is_redirected_when_https_is_required(asgi_post, api_key, settings):
    settings.SECURE_SSL_REDIRECT = True
    response = asgi_post(key=api_key.plaintext)
    assert response.status_code == 301
    assert response.headers["location"] == "https://127.0.0.1/v1/realtime/client_secrets"


def test_an_unexpected_error_is_an_openai_shaped_500_without_internals(
    asgi_post, api_key, monkeypatch, caplog
):
    def broken(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("tokens.asgi.client_secret_issue_start", broken)
    response = asgi_post(key=api_key.plaintext, **{"X-Request-Id": "trace-500"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "trace-500" in response.json()["error"]["message"]
    assert "secret internals" not in response.text
    assert any(record.exc_info for record in caplog.records)


def test_other_requests_go_to_django(asgi_post, api_key):
    wrong_method = asgi_post(key=api_key.plaintext, method="GET")
    assert wrong_method.status_code == 405  # answered by the DRF view
    assert set(wrong_method.json()["error"]) == {"message", "type", "param", "code"}
    assert asgi_post(key=api_key.plaintext, method="GET", path="/api/v1/client_secrets").status_code == 200


def test_it_can_be_switched_off(asgi_post, api_key, settings):
    settings.ISSUANCE_FAST_PATH = False
    response = asgi_post(key=api_key.plaintext)
    assert response.status_code == 200  # the DRF view under Django's ASGI handler
    assert ClientSecret.objects.count() == 1
