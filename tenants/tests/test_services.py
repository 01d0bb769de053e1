from __future__ import annotations

from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from conftest import make_key
from realtime_platform import crypto
from realtime_platform.errors import BadRequest, Conflict
from tenants.auth import api_key_authenticate
from tenants.models import Membership, Role, SessionPolicy, UpstreamCredential
from tenants.selectors import tenant_limits, upstream_api_key
from tenants.services import (
    api_key_revoke,
    api_key_rotate,
    membership_change_role,
    membership_remove,
    quota_override_update,
    session_policy_update,
    upstream_credential_reencrypt_all,
    upstream_credential_set,
)


def dump_database() -> str:
    """Every column of every row of every table, as text: what a leaked backup would show."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


@pytest.mark.django_db
def test_api_key_plaintext_is_nowhere_in_the_database(tenant):
    issued = make_key(tenant)
    rotated = api_key_rotate(api_key=issued.api_key, actor=issued_actor())
    dump = dump_database()
    for plaintext in (issued.plaintext, rotated.plaintext):
        assert plaintext not in dump
        assert plaintext[15:-7] not in dump  # not even the random middle
    assert issued.api_key.prefix in dump  # the lookup prefix is stored, by design


def issued_actor():
    from audit.actors import Actor

    return Actor.system("tests")


@pytest.mark.django_db
def test_rotation_without_grace_revokes_the_old_key_at_once(tenant):
    issued = make_key(tenant, name="mobile", secrets_per_day=5)
    new = api_key_rotate(api_key=issued.api_key, actor=issued_actor())
    assert new.api_key.name == "mobile"
    assert new.api_key.scopes == issued.api_key.scopes
    assert new.api_key.secrets_per_day == 5
    assert new.api_key.rotated_from_id == issued.api_key.pk
    assert api_key_authenticate(new.plaintext).api_key == new.api_key
    issued.api_key.refresh_from_db()
    assert issued.api_key.status == "revoked"
    event = AuditEvent.objects.filter(action="key.rotated").get()
    assert event.details == {
        "old_prefix": issued.api_key.prefix,
        "new_prefix": new.api_key.prefix,
        "grace_seconds": 0,
    }


@pytest.mark.django_db
def test_rotation_with_grace_keeps_the_old_key_working_until_the_cutoff(tenant):
    issued = make_key(tenant)
    api_key_rotate(api_key=issued.api_key, actor=issued_actor(), grace_seconds=3600)
    issued.api_key.refresh_from_db()
    assert issued.api_key.status == "active"
    assert api_key_authenticate(issued.plaintext).api_key == issued.api_key
    later = timezone.now() + timezone.timedelta(hours=2)
    assert issued.api_key.status_at(later) == "expired"


@pytest.mark.django_db
def test_revoked_key_cannot_be_rotated(tenant):
    issued = make_key(tenant)
    api_key_revoke(api_key=issued.api_key, actor=issued_actor())
    with pytest.raises(Conflict):
        api_key_rotate(api_key=issued.api_key, actor=issued_actor())


@pytest.mark.django_db
def test_revocation_is_audited_once(tenant):
    issued = make_key(tenant)
    api_key_revoke(api_key=issued.api_key, actor=issued_actor())
    api_key_revoke(api_key=issued.api_key, actor=issued_actor())
    assert AuditEvent.objects.filter(action="key.revoked", target_id=str(issued.api_key.pk)).count() == 1


@pytest.mark.django_db
def test_unknown_scope_is_refused(tenant):
    with pytest.raises(BadRequest) as excinfo:
        make_key(tenant, scopes=["secrets:create", "admin:everything"])
    assert excinfo.value.param == "scopes"


@pytest.mark.django_db
def test_last_owner_cannot_be_demoted_or_removed(owner, admin_user, tenant):
    membership = Membership.objects.get(user=owner, tenant=tenant)
    with pytest.raises(Conflict):
        membership_change_role(membership=membership, role=Role.ADMIN, actor=issued_actor())
    with pytest.raises(Conflict):
        membership_remove(membership=membership, actor=issued_actor())
    # with a second owner, the first may step down
    second = Membership.objects.get(user=admin_user, tenant=tenant)
    membership_change_role(membership=second, role=Role.OWNER, actor=issued_actor())
    membership_change_role(membership=membership, role=Role.VIEWER, actor=issued_actor())
    changed = AuditEvent.objects.filter(action="member.role_changed").order_by("seq").last()
    assert changed.details["role"] == {"before": "owner", "after": "viewer"}


@pytest.mark.django_db
def test_quota_override_tightens_the_plan_and_is_audited_with_before_and_after(tenant):
    quota_override_update(tenant=tenant, actor=issued_actor(), values={"secrets_per_day": 100})
    assert tenant_limits(tenant=tenant).secrets_per_day == 100
    assert tenant_limits(tenant=tenant).concurrent_sessions == tenant.plan.concurrent_sessions
    with pytest.raises(BadRequest) as excinfo:
        quota_override_update(tenant=tenant, actor=issued_actor(), values={"secrets_per_day": 10**9})
    assert excinfo.value.code == "above_plan_limit"
    event = AuditEvent.objects.get(action="quota.changed")
    assert event.details == {"changes": {"secrets_per_day": {"before": None, "after": 100}}}


@pytest.mark.django_db
def test_session_policy_validation_and_audit(tenant):
    with pytest.raises(BadRequest) as excinfo:
        session_policy_update(tenant=tenant, actor=issued_actor(), values={"ttl_min_seconds": 5})
    assert excinfo.value.param == "ttl_default_seconds"
    with pytest.raises(BadRequest):
        session_policy_update(tenant=tenant, actor=issued_actor(), values={"allowed_models": "gpt-realtime"})
    policy = session_policy_update(
        tenant=tenant,
        actor=issued_actor(),
        values={"allowed_models": ["gpt-realtime"], "session_cost_ceiling_usd": Decimal("0.50")},
    )
    assert SessionPolicy.objects.get(pk=policy.pk).allowed_models == ["gpt-realtime"]
    event = AuditEvent.objects.get(action="policy.changed")
    assert event.details["changes"]["session_cost_ceiling_usd"] == {"before": None, "after": "0.50"}


@pytest.mark.django_db
def test_upstream_credential_is_encrypted_at_rest_and_never_audited(tenant):
    secret = "sk-proj-" + "x1Y2z3" * 8
    upstream_credential_set(tenant=tenant, secret=secret, actor=issued_actor())
    credential = UpstreamCredential.objects.get(tenant=tenant)
    assert secret not in credential.ciphertext
    assert credential.last_four == secret[-4:]
    assert upstream_api_key(tenant=tenant) == secret
    assert secret not in dump_database()
    event = AuditEvent.objects.get(action="upstream_credential.set")
    assert event.details == {"last_four": secret[-4:]}


@pytest.mark.django_db
def test_upstream_credentials_survive_encryption_key_rotation(tenant, settings):
    secret = "sk-proj-" + "rotate" * 8
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old_key]
    crypto.reset_cache()
    try:
        upstream_credential_set(tenant=tenant, secret=secret, actor=issued_actor())
        settings.FIELD_ENCRYPTION_KEYS = [new_key, old_key]  # new key first, old still readable
        crypto.reset_cache()
        assert upstream_api_key(tenant=tenant) == secret
        assert upstream_credential_reencrypt_all() == 1
        settings.FIELD_ENCRYPTION_KEYS = [new_key]  # old key retired
        crypto.reset_cache()
        assert upstream_api_key(tenant=tenant) == secret
    finally:
        crypto.reset_cache()


@pytest.mark.django_db
def test_upstream_credential_rejects_obvious_garbage(tenant):
    with pytest.raises(BadRequest):
        upstream_credential_set(tenant=tenant, secret="short", actor=issued_actor())
    assert not UpstreamCredential.objects.filter(tenant=tenant).exists()
