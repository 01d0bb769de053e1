import pytest
from django.contrib.auth.models import AnonymousUser

from audit.access import access_audit_trail
from realtime_platform.errors import NotFound

pytestmark = pytest.mark.django_db


def test_owners_admins_and_compliance_staff_may_read_the_trail(tenant, owner, admin_user, compliance_user):
    for user in (owner, admin_user, compliance_user):
        assert access_audit_trail(user=user, tenant_id=tenant.pk).tenant == tenant


def test_viewers_outsiders_and_strangers_get_the_same_not_found(tenant, viewer, outsider):
    for user in (viewer, outsider, AnonymousUser()):
        with pytest.raises(NotFound):
            access_audit_trail(user=user, tenant_id=tenant.pk)
    with pytest.raises(NotFound):
        access_audit_trail(user=outsider, tenant_id=999_999)
