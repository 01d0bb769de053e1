from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform.admin_mixins import ReadOnlyAdmin
from realtime_platform.http import client_ip
from tenants.models import ApiKey, Membership, Plan, QuotaOverride, SessionPolicy, Tenant, UpstreamCredential
from tenants.services import tenant_set_status


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user, ip=client_ip(request.META))  # type: ignore[arg-type]


def _audit_form_changes(
    request: HttpRequest, obj: Any, form: Any, action: str, tenant: Tenant | None
) -> None:
    changed = [name for name in form.changed_data if name != "status"]
    if changed:
        details = {"changes": {name: str(form.cleaned_data.get(name)) for name in changed}}
        audit_record(tenant=tenant, actor=_actor(request), action=action, target=obj, details=details)


# Inline rows the tenant page edits, and the audit action for each kind of change, named like the
# services' own actions so the trail reads the same whichever door a change came through.
_INLINE_ACTIONS: dict[type[models.Model], dict[str, str]] = {
    SessionPolicy: {"added": "policy.changed", "changed": "policy.changed", "deleted": "policy.changed"},
    QuotaOverride: {"added": "quota.changed", "changed": "quota.changed", "deleted": "quota.changed"},
    Membership: {"added": "member.added", "changed": "member.role_changed", "deleted": "member.removed"},
}


def _audit_inline_changes(request: HttpRequest, tenant: Tenant, formset: Any) -> None:
    """Audit what an operator changed in the tenant page's inlines, with before and after."""
    actions = _INLINE_ACTIONS.get(formset.model)
    if actions is None:
        return
    actor = _actor(request)
    initial = {form.instance.pk: form.initial for form in formset.initial_forms}

    def record(kind: str, obj: Any, details: dict[str, Any]) -> None:
        if isinstance(obj, Membership):
            details = {"user": obj.user.get_username(), "role": obj.role, **details}
        audit_record(
            tenant=tenant, actor=actor, action=actions[kind], target=obj, details={**details, "via": "admin"}
        )

    for obj in formset.new_objects:
        record("added", obj, {})
    for obj, fields in formset.changed_objects:
        before = initial.get(obj.pk, {})
        changes = {
            name: {"before": str(before.get(name)), "after": str(getattr(obj, name))} for name in fields
        }
        record("changed", obj, {"changes": changes})
    for obj in formset.deleted_objects:
        record("deleted", obj, {})


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("slug", "name", "secrets_per_day", "concurrent_sessions", "cost_usd_per_month")
    search_fields = ("slug", "name")

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        _audit_form_changes(request, obj, form, "plan.changed" if change else "plan.created", None)


class SessionPolicyInline(admin.StackedInline):  # type: ignore[type-arg]
    model = SessionPolicy
    can_delete = False


class QuotaOverrideInline(admin.StackedInline):  # type: ignore[type-arg]
    model = QuotaOverride
    can_delete = False


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("slug", "name", "status", "plan", "upstream_mode", "created_at")
    list_filter = ("status", "plan", "upstream_mode")
    search_fields = ("slug", "name")
    readonly_fields = ("created_at", "suspended_at")
    inlines = (SessionPolicyInline, QuotaOverrideInline, MembershipInline)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}  # webhooks are https

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        new_status = obj.status
        if change and "status" in form.changed_data:
            obj.status = form.initial["status"]  # the service applies, audits and fans out the change
        super().save_model(request, obj, form, change)
        if not change:
            SessionPolicy.objects.get_or_create(tenant=obj)
        if obj.status != new_status:
            tenant_set_status(tenant=obj, status=new_status, actor=_actor(request), reason="Django admin")
        _audit_form_changes(request, obj, form, "tenant.updated" if change else "tenant.created", obj)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        super().save_formset(request, form, formset, change)  # inside the admin's transaction
        _audit_inline_changes(request, form.instance, formset)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "name", "tenant", "status", "created_at", "last_used_at")
    list_filter = ("tenant",)
    search_fields = ("prefix", "name", "tenant__slug")
    exclude = ("fingerprint",)


@admin.register(UpstreamCredential)
class UpstreamCredentialAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "last_four", "updated_at")
    exclude = ("ciphertext",)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role", "tenant")
    search_fields = ("user__username", "tenant__slug")
    autocomplete_fields = ("user",)

    def _record(self, request: HttpRequest, obj: Membership, action: str, details: dict[str, Any]) -> None:
        details = {"user": obj.user.get_username(), "role": obj.role, **details, "via": "admin"}
        audit_record(tenant=obj.tenant, actor=_actor(request), action=action, target=obj, details=details)

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            self._record(request, obj, "member.added", {})
        elif "role" in form.changed_data:
            role = {"before": form.initial.get("role"), "after": obj.role}
            self._record(request, obj, "member.role_changed", {"role": role})

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        self._record(request, obj, "member.removed", {})
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for membership in queryset.select_related("user", "tenant"):
            self._record(request, membership, "member.removed", {})
        super().delete_queryset(request, queryset)
