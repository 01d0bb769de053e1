from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.models import AuditCheckpoint, AuditEvent
from realtime_platform.admin_mixins import ReadOnlyAdmin


class ActionFamilyFilter(admin.SimpleListFilter):
    """By family (key., secret., session. …), from a fixed list: a DISTINCT over millions of rows
    on every page load would be slow."""

    title = "action"
    parameter_name = "family"
    FAMILIES = (
        "tenant",
        "member",
        "key",
        "secret",
        "session",
        "quota",
        "policy",
        "plan",
        "upstream_credential",
        "auth",
        "export",
        "audit",
        "alert",
    )

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(family, f"{family}.*") for family in self.FAMILIES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(action__startswith=f"{value}.") if value else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "chain",
        "seq",
        "action",
        "actor_type",
        "actor_label",
        "target_type",
        "target_id",
    )
    list_filter = (ActionFamilyFilter, "actor_type")
    search_fields = ("=request_id", "=target_id", "=actor_label", "=chain")
    ordering = ("-id",)
    show_full_result_count = False  # counting millions of rows on every page load is slow


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "chain", "seq", "kind", "key_id", "hash")
    list_filter = ("kind",)
    search_fields = ("=chain",)
    ordering = ("-id",)
