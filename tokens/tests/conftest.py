from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from audit.actors import Actor
from tenants.models import SessionPolicy
from tenants.services import quota_override_update, session_policy_update
from tokens.ratelimit import breaker_reset

URL = "/v1/realtime/client_secrets"


@pytest.fixture(autouse=True)
def _closed_breaker():
    breaker_reset()
    yield
    breaker_reset()


@pytest.fixture
def make_key_for():
    """A new key of `tenant` with `scopes`; returns its plaintext."""
    from conftest import make_key

    def make(tenant, scopes, name="extra key"):
        return make_key(tenant, name=name, scopes=scopes).plaintext

    return make


def issue(client: APIClient, body: Any = None, **headers: str):
    """POST a client-secret request through Django's test client (the DRF view)."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return client.post(URL, data=data, content_type="application/json", **headers)


def set_policy(tenant, **values) -> SessionPolicy:
    return session_policy_update(tenant=tenant, actor=Actor.system("tests"), values=values)


def set_limits(tenant, **values) -> None:
    quota_override_update(tenant=tenant, actor=Actor.system("tests"), values=values)
