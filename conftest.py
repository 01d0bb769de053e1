"""Project-wide fixtures: healthchecks-style alice/bob/charlie, as tenants, roles and keys.

Tests that need PostgreSQL (row locks, races), Redis (channel layer, broker, shared limits) or a
browser carry `@pytest.mark.postgres` / `@pytest.mark.redis` / `@pytest.mark.browser`. Without
DATABASE_URL / REDIS_URL / Debian's Chromium they are skipped locally; CI sets
RTP_REQUIRE_SERVICES=1, which turns a would-be skip into a failure so they can never silently stop
running there.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from audit.actors import Actor
from tenants.models import ALL_SCOPES, Role, Scope
from tenants.services import IssuedApiKey, api_key_create
from tenants.tests.factories import MembershipFactory, TenantFactory, UserFactory

# `emulator` (a live OpenAI emulator) and `live_server_asgi` (the whole platform on daphne).
pytest_plugins = ["upstream.testing"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = {
        "postgres": None if settings.IS_POSTGRES else "needs PostgreSQL (set DATABASE_URL)",
        "redis": None if settings.REDIS_URL else "needs Redis (set REDIS_URL)",
        "browser": None
        if shutil.which("chromium") or os.path.exists("/usr/bin/chromium")
        else "needs Chromium (apt-get install chromium; .ci/run installs it)",
    }
    required = os.environ.get("RTP_REQUIRE_SERVICES") == "1"
    for item in items:
        for marker, reason in missing.items():
            if reason and item.get_closest_marker(marker):
                if required:
                    raise pytest.UsageError(
                        f"{item.nodeid} {reason}, and RTP_REQUIRE_SERVICES=1 forbids skipping"
                    )
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing() -> Any:
    """Test users' passwords hash with MD5: the real hasher (PBKDF2, ~0.4 s per user here) would
    make every fixture with a few users cost seconds. Production settings are untouched."""
    from django.test.utils import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    """The audit tables refuse TRUNCATE/DELETE; let pytest-django flush the test database."""
    from django.db import connection

    from audit.testing import allow_test_database_flush

    with django_db_blocker.unblock():
        allow_test_database_flush(connection)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    cache.clear()  # rate-limit windows and caches never leak from one test into the next


@pytest.fixture
def system_actor() -> Actor:
    return Actor.system("tests")


@pytest.fixture
def tenant(db: Any) -> Any:
    return TenantFactory(slug="alice-co", name="Alice Co")


@pytest.fixture
def other_tenant(db: Any) -> Any:
    return TenantFactory(slug="bob-co", name="Bob Co")


def _member(tenant: Any, role: str, username: str) -> Any:
    return MembershipFactory(tenant=tenant, role=role, user=UserFactory(username=username)).user


@pytest.fixture
def owner(tenant: Any) -> Any:
    return _member(tenant, Role.OWNER, "alice")


@pytest.fixture
def admin_user(tenant: Any) -> Any:
    return _member(tenant, Role.ADMIN, "alan")


@pytest.fixture
def compliance_user(tenant: Any) -> Any:
    return _member(tenant, Role.COMPLIANCE, "carol")


@pytest.fixture
def viewer(tenant: Any) -> Any:
    return _member(tenant, Role.VIEWER, "victor")


@pytest.fixture
def outsider(other_tenant: Any) -> Any:
    """Bob: an owner, but of the other tenant."""
    return _member(other_tenant, Role.OWNER, "bob")


def make_key(tenant: Any, name: str = "test key", scopes: Any = ALL_SCOPES, **kwargs: Any) -> IssuedApiKey:
    return api_key_create(tenant=tenant, name=name, scopes=scopes, actor=Actor.system("tests"), **kwargs)


@pytest.fixture
def api_key(tenant: Any) -> IssuedApiKey:
    return make_key(tenant)


@pytest.fixture
def read_only_key(tenant: Any) -> IssuedApiKey:
    return make_key(tenant, name="reader", scopes=[Scope.MANAGE_READ])


@pytest.fixture
def other_tenant_key(other_tenant: Any) -> IssuedApiKey:
    return make_key(other_tenant, name="bob key")


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def key_client(api_key: IssuedApiKey) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key.plaintext}")
    return client
