from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.contrib import admin, messages
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.actors import Actor
from audit.services import audit_record
from realtime_platform.admin_mixins import ReadOnlyAdmin
from realtime_platform.errors import ApplicationError
from realtime_platform.http import client_ip
from tenants.models import ApiKey, Membership, Plan, QuotaOverride, SessionPolicy, Tenant, UpstreamCredential
from tenants.services import (
    membership_add,
    membership_change_role,
    membership_remove,
    quota_override_update,
    session_policy_update,
    tenant_set_status,
)


def _actor(request: HttpRequest) -> Actor:
    return Actor.for_user(request.user, ip=client_ip(request.META))  # type: ignore[arg-type]


def _shown(name: str, value: Any) -> str:
    # A webhook URL often carries its secret in the path or query: record only where it points.
    if name.endswith("_url") and value:
        parts = urlsplit(str(value))
        return f"{parts.scheme}://{parts.hostname or ''}/…"
    return str(value)


def _audit_form_changes(
    request: HttpRequest, obj: Any, form: Any, action: str, tenant: Tenant | None
) -> None:
    changed = [name for name in form.changed_data if name != "status"]
    if changed:
        details = {"changes": {name: _shown(name, form.cleaned_data.get(name)) for name in changed}}
        audit_record(tenant=tenant, actor=_actor(request), action=action, target=obj, details=details)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("slug", "name", "secrets_per_day", "concurrent_sessions", "cost_usd_per_month")
    search_fields = ("slug", "name")

    def save_model(self, request: HttpRequest, obj: Plan, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        _audit_form_changes(request, obj, form, "plan.changed" if change else "plan.created", None)

    def delete_model(self, request: HttpRequest, obj: Plan) -> None:
        with transaction.atomic():
            audit_record(
                tenant=None,
                actor=_actor(request),
                action="plan.deleted",
                target=obj,
                details={"slug": obj.slug},
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        for plan in queryset:
            self.delete_model(request, plan)


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


def _apply_membership_form(request: HttpRequest, form: Any, tenant: Tenant, actor: Actor) -> None:
    """One row of a membership form(set), through the services (validated and audited)."""
    instance = form.instance
    if form.cleaned_data.get("DELETE") and instance.pk is not None:
        membership_remove(membership=instance, actor=actor)
    elif instance.pk is None:
        membership_add(
            tenant=tenant, user=form.cleaned_data["user"], role=form.cleaned_data["role"], actor=actor
        )
    elif "role" in form.changed_data:
        membership_change_role(membership=instance, role=form.cleaned_data["role"], actor=actor)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("slug", "name", "status", "plan", "upstream_mode", "created_at")
    list_filter = ("status", "plan", "upstream_mode")
    search_fields = ("slug", "name")
    readonly_fields = ("created_at", "suspended_at")
    inlines = (SessionPolicyInline, QuotaOverrideInline, MembershipInline)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}  # webhooks are https

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Tenants are suspended, never deleted: their audit trail has to outlive them.
        return False

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
        """Inline limits, policy and members go through their services, so the admin gets the
        same validation and the same audit events as the console."""
        tenant: Tenant = form.instance
        actor = _actor(request)
        model = formset.model
        if model not in (SessionPolicy, QuotaOverride, Membership):
            super().save_formset(request, form, formset, change)
            return
        # The admin's change message reads these; the services did the saving.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        try:
            with transaction.atomic():
                for inline in formset.forms:
                    if not inline.has_changed() or not hasattr(inline, "cleaned_data"):
                        continue
                    if model is Membership:
                        _apply_membership_form(request, inline, tenant, actor)
                        continue
                    values = {name: inline.cleaned_data[name] for name in inline.changed_data}
                    if model is SessionPolicy:
                        session_policy_update(tenant=tenant, actor=actor, values=values)
                    else:
                        quota_override_update(tenant=tenant, actor=actor, values=values)
        except ApplicationError as exc:
            messages.error(request, f"Not saved: {exc.message}")


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
    """Members are added, re-roled and removed through the services (validated, audited); the
    user and tenant of an existing membership are fixed."""

    list_display = ("user", "tenant", "role", "created_at")
    list_filter = ("role", "tenant")
    search_fields = ("user__username", "tenant__slug")
    autocomplete_fields = ("user",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return ("user", "tenant") if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        try:
            if not change:
                saved = membership_add(tenant=obj.tenant, user=obj.user, role=obj.role, actor=_actor(request))
                obj.pk = saved.pk
            elif "role" in form.changed_data:
                membership_change_role(membership=obj, role=obj.role, actor=_actor(request))
        except ApplicationError as exc:
            messages.error(request, f"Not saved: {exc.message}")

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        try:
            membership_remove(membership=obj, actor=_actor(request))
        except ApplicationError as exc:
            messages.error(request, f"Not removed: {exc.message}")

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Membership]) -> None:
        for membership in queryset:
            self.delete_model(request, membership)
