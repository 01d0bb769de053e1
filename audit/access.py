"""Who may read a tenant's audit trail: its owners, admins and compliance staff (viewers may not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tenants.access import access_membership
from tenants.models import Membership, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

AUDIT_ROLES = frozenset({Role.OWNER, Role.ADMIN, Role.COMPLIANCE})


def access_audit_trail(*, user: User | AnonymousUser, tenant_id: int) -> Membership:
    """The user's membership if it may read (and export) the tenant's audit trail.

    Cases: not logged in, not a member, a viewer → NotFound("tenant"), the same answer as for a
    tenant that does not exist."""
    return access_membership(user=user, tenant_id=tenant_id, roles=AUDIT_ROLES)
