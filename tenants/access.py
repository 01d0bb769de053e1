"""May this console user touch this object? Unknown, other tenant's, and not-allowed all raise the
same NotFound, so nobody can probe another tenant's ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

from realtime_platform.errors import NotFound
from tenants.models import MANAGER_ROLES, ApiKey, Membership, Role
from tenants.selectors import membership_get

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


def access_membership(
    *, user: User | AnonymousUser, tenant_id: int, roles: frozenset[str] | None = None
) -> Membership:
    """The user's membership of tenant `tenant_id`, if it has one of `roles` (any role if None).

    Cases: not logged in, no membership, role not allowed → NotFound("tenant").
    """
    membership = membership_get(user=user, tenant_id=tenant_id)
    if membership is None:
        raise NotFound("tenant")
    if roles is not None and membership.role not in roles:
        raise NotFound("tenant")
    return membership


def assignable_roles(*, manager_role: str) -> tuple[str, ...]:
    """Roles a manager may grant: owners grant any role; admins every role but owner (so an admin
    cannot promote anyone, themselves included, above their own role)."""
    if manager_role == Role.OWNER:
        return tuple(Role.values)
    if manager_role == Role.ADMIN:
        return tuple(role for role in Role.values if role != Role.OWNER)
    return ()


def access_api_key(
    *, user: User | AnonymousUser, tenant_id: int, key_id: int, manage: bool = False
) -> ApiKey:
    """Cases: no membership, viewer/compliance asking to manage, unknown key, other tenant's key →
    NotFound("api_key")."""
    membership = membership_get(user=user, tenant_id=tenant_id)
    if membership is None:
        raise NotFound("api_key")
    if manage and membership.role not in MANAGER_ROLES:
        raise NotFound("api_key")
    api_key = ApiKey.objects.filter(tenant_id=tenant_id, id=key_id).first()
    if api_key is None:
        raise NotFound("api_key")
    return api_key


def access_member(*, user: User | AnonymousUser, tenant_id: int, membership_id: int) -> Membership:
    """A membership of the tenant that `user` may manage. Cases: user not owner/admin of the
    tenant, unknown membership, another tenant's membership → NotFound("member")."""
    manager = membership_get(user=user, tenant_id=tenant_id)
    if manager is None or manager.role not in MANAGER_ROLES:
        raise NotFound("member")
    member = Membership.objects.select_related("user").filter(tenant_id=tenant_id, id=membership_id).first()
    if member is None:
        raise NotFound("member")
    if member.role == Role.OWNER and manager.role != Role.OWNER:
        raise NotFound("member")  # admins manage everyone but owners
    return member
