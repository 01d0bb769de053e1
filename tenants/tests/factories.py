from __future__ import annotations

from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth import get_user_model

from audit.actors import Actor
from tenants.models import Membership, Plan, Role, Tenant
from tenants.services import tenant_create


class PlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Plan
        django_get_or_create = ("slug",)

    slug = "default"
    name = "Default"
    secrets_per_day = 10_000
    concurrent_sessions = 25
    audio_minutes_per_month = 30_000
    tokens_per_month = 50_000_000
    cost_usd_per_month = Decimal("1000.00")
    requests_per_minute = 600
    max_session_seconds = 3600
    secret_ttl_max_seconds = 7200


class TenantFactory(factory.django.DjangoModelFactory):
    """Tenants are made by the real service, so each has its policy and its audit row."""

    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())
    plan = factory.SubFactory(PlanFactory)

    @classmethod
    def _create(cls, model_class: type[Tenant], *args: Any, **kwargs: Any) -> Tenant:
        status = kwargs.pop("status", Tenant.Status.ACTIVE)
        tenant = tenant_create(
            slug=kwargs.pop("slug"),
            name=kwargs.pop("name"),
            plan=kwargs.pop("plan"),
            actor=Actor.system("factory"),
        )
        extra = {**kwargs, "status": status}
        for name, value in extra.items():
            setattr(tenant, name, value)
        tenant.save()
        return tenant


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    tenant = factory.SubFactory(TenantFactory)
    role = Role.VIEWER
