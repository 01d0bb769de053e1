from __future__ import annotations

import asyncio

import pytest
from django.core.cache import caches


@pytest.mark.django_db
def test_healthz_reports_every_dependency(api_client, settings):
    response = api_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    for name in ("database", "cache", "channel_layer", "broker"):
        assert body["checks"][name]["ok"] is True, body
        assert body["checks"][name]["latency_ms"] >= 0
    expected_backend = "postgresql" if settings.IS_POSTGRES else "sqlite"
    assert body["checks"]["database"]["backend"] == expected_backend
    assert body["checks"]["broker"]["embedded"] is (not settings.REDIS_URL)
    assert body["checks"]["upstream"]["mode"] == "emulator"


@pytest.mark.django_db
def test_healthz_is_503_when_the_cache_is_unreachable(api_client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    try:
        response = api_client.get("/healthz")
    finally:
        caches["default"].close()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["cache"]["ok"] is False
    assert "ConnectionError" in body["checks"]["cache"]["error"]
    assert body["checks"]["database"]["ok"] is True
    assert response["Retry-After"] == "5"


@pytest.mark.django_db
def test_healthz_is_503_when_the_broker_is_unreachable(api_client, settings):
    from realtime_platform.celery import app

    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = api_client.get("/healthz")
    finally:
        app.conf.broker_url = original
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False


@pytest.mark.redis
async def test_channel_layer_check_passes_while_relay_sessions_listen():
    """A live relay session waits on the layer for kill-switch messages. channels_redis lets one
    receiver at a time read the process's channels of a given prefix; the check must use the same
    prefix, or it waits behind that receiver's 5 s blocking read and times out (503 while any
    session is live)."""
    from channels.layers import get_channel_layer

    from realtime_platform.health import _channel_round_trip

    layer = get_channel_layer()
    listening = asyncio.create_task(layer.receive(await layer.new_channel()))  # as relay consumers do
    await asyncio.sleep(0.1)
    try:
        await _channel_round_trip()
    finally:
        listening.cancel()
