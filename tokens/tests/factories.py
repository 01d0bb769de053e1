from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from tenants.tests.factories import TenantFactory
from tokens.models import ClientSecret


class ClientSecretFactory(factory.django.DjangoModelFactory):
    """A client secret row as issuance stores it (fingerprint and last four only), for pages and
    lists; tests of issuance itself go through the API."""

    class Meta:
        model = ClientSecret

    tenant = factory.SubFactory(TenantFactory)
    api_key = None
    kind = ClientSecret.Kind.RELAY
    lookup_prefix = "rtp_rt_Abcd1234"
    fingerprint = factory.Sequence(lambda n: f"{n:064x}")
    last_four = factory.Sequence(lambda n: f"{n % 10_000:04d}")
    model = "gpt-realtime"
    session_config = factory.LazyAttribute(lambda o: {"type": "realtime", "model": o.model})
    created_at = factory.LazyFunction(timezone.now)
    expires_at = factory.LazyAttribute(lambda o: o.created_at + timedelta(minutes=10))
