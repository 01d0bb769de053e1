"""Who did something: a console user, an API key, or the platform itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from tenants.models import ApiKey

ActorKind = Literal["user", "api_key", "system"]


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    id: str
    label: str
    ip: str | None = None

    @classmethod
    def for_user(cls, user: AbstractBaseUser, ip: str | None = None) -> Actor:
        return cls(kind="user", id=str(user.pk), label=user.get_username(), ip=ip)

    @classmethod
    def for_api_key(cls, api_key: ApiKey, ip: str | None = None) -> Actor:
        return cls(kind="api_key", id=str(api_key.pk), label=api_key.prefix, ip=ip)

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(kind="system", id="", label=label)
