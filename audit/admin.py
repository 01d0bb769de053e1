from django.contrib import admin

from audit.models import AuditEvent
from realtime_platform.admin_mixins import ReadOnlyAdmin


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
    list_filter = ("action", "actor_type")
    search_fields = ("request_id", "target_id", "actor_label")
    ordering = ("-id",)
    show_full_result_count = False  # counting millions of rows on every page load is slow
