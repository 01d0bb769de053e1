from django.contrib import admin

from realtime_platform.admin_mixins import ReadOnlyAdmin
from usage.models import QuotaCounter, UsageEvent


@admin.register(QuotaCounter)
class QuotaCounterAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "api_key", "metric", "period_start", "used", "updated_at")
    list_filter = ("metric",)


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "tenant", "kind", "model", "cost_usd", "natural_key")
    list_filter = ("kind",)
    show_full_result_count = False
