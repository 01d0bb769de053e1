"""Relay-token redemption (CONTRACTS §3): each refusal, single use under concurrency."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from audit.actors import Actor
from realtime_platform.errors import ApplicationError, AuthenticationFailed, PermissionDenied
from relay.models import RealtimeSession
from relay.services import relay_session_open
from relay.tests.conftest import make_relay_token
from relay.tests.fakes import FakeConnector
from tenants import keys
from tenants.models import Tenant
from tenants.services import api_key_revoke
from tokens.models import ClientSecret
from tokens.redemption import relay_token_redeem

pytestmark = pytest.mark.django_db


def refusal(raw: str) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        relay_token_redeem(raw=raw)
    return caught.value


def test_redeeming_a_single_use_token_consumes_it(tenant, api_key):
    token, secret = make_relay_token(tenant, api_key.api_key)
    redeemed = relay_token_redeem(raw=token)
    assert redeemed.pk == secret.pk
    secret.refresh_from_db()
    assert secret.status == ClientSecret.Status.USED
    assert secret.used_at is not None
    assert refusal(token).code == "relay_token_used"


def test_multi_use_token_stays_active_until_it_expires(tenant, api_key):
    token, secret = make_relay_token(tenant, api_key.api_key, single_use=False)
    relay_token_redeem(raw=token)
    relay_token_redeem(raw=token)
    secret.refresh_from_db()
    assert secret.status == ClientSecret.Status.ACTIVE
    assert secret.used_at is not None


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"status": ClientSecret.Status.REVOKED}, "relay_token_revoked"),
        ({"status": ClientSecret.Status.EXPIRED}, "relay_token_expired"),
        ({"status": ClientSecret.Status.USED}, "relay_token_used"),
        ({"expires_at": "past"}, "relay_token_expired"),
    ],
)
def test_unusable_tokens_are_refused(tenant, api_key, fields, code):
    if fields.get("expires_at") == "past":
        fields = {"expires_at": timezone.now() - timedelta(seconds=1)}
    token, _ = make_relay_token(tenant, api_key.api_key, **fields)
    error = refusal(token)
    assert isinstance(error, AuthenticationFailed)
    assert error.code == code


def test_token_of_a_revoked_key_or_suspended_tenant_is_refused(tenant, api_key):
    token, _ = make_relay_token(tenant, api_key.api_key)
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.SUSPENDED)
    assert isinstance(refusal(token), PermissionDenied)
    Tenant.objects.filter(pk=tenant.pk).update(status=Tenant.Status.ACTIVE)
    api_key_revoke(api_key=api_key.api_key, actor=Actor.system("tests"))
    assert refusal(token).code == "api_key_revoked"
    assert ClientSecret.objects.get(fingerprint=keys.fingerprint(token)).status == ClientSecret.Status.ACTIVE


def test_unknown_malformed_and_api_keys_are_not_relay_tokens(tenant, api_key):
    unknown = keys.generate(keys.KeyType.RELAY_TOKEN).plaintext
    for raw in (unknown, "rtp_rt_short", api_key.plaintext):
        assert refusal(raw).code == "invalid_api_key"
    # an upstream-kind row with the same fingerprint is not a relay token either
    token, _ = make_relay_token(tenant, api_key.api_key, kind=ClientSecret.Kind.UPSTREAM)
    assert refusal(token).code == "invalid_api_key"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_open_exactly_one_session(tenant, api_key, monkeypatch):
    """100 handshakes with one single-use token, 25 at a time on separate database connections:
    exactly one session opens, every other attempt is told the token is used."""
    monkeypatch.setattr("relay.services.upstream_connector_for", lambda tenant: FakeConnector())
    token, secret = make_relay_token(tenant, api_key.api_key)
    start = threading.Barrier(25)

    def attempt(_: int) -> str:
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait(timeout=10)
        try:
            relay_session_open(credential=token, model="gpt-realtime")
            return "opened"
        except ApplicationError as exc:
            return str(exc.code)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes: list[Any] = list(pool.map(attempt, range(100)))
    assert outcomes.count("opened") == 1
    assert set(outcomes) == {"opened", "relay_token_used"}
    assert RealtimeSession.objects.filter(client_secret=secret).count() == 1
    secret.refresh_from_db()
    assert secret.status == ClientSecret.Status.USED
