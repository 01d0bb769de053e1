from django.contrib import admin

from realtime_platform.admin_mixins import ReadOnlyAdmin
from relay.models import RealtimeSession


@admin.register(RealtimeSession)
class RealtimeSessionAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "tenant",
        "credential",
        "model",
        "status",
        "started_at",
        "ended_at",
        "end_reason",
        "close_code",
        "cost_usd",
    )
    list_filter = ("status", "credential", "end_reason")
    search_fields = ("id", "tenant__slug")
    show_full_result_count = False
