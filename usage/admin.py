from django.contrib import admin

from realtime_platform.admin_mixins import ReadOnlyAdmin
from usage.models import AlertDelivery, QuotaAlert, QuotaCounter, UsageEvent, UsageRollup


@admin.register(QuotaCounter)
class QuotaCounterAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "api_key", "metric", "period_start", "used", "updated_at")
    list_filter = ("metric",)


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "tenant", "kind", "model", "cost_usd", "natural_key")
    list_filter = ("kind",)
    show_full_result_count = False


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = ("bucket_start", "granularity", "tenant", "api_key_id", "model", "responses", "cost_usd")
    list_filter = ("granularity",)
    show_full_result_count = False


@admin.register(QuotaAlert)
class QuotaAlertAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "metric", "threshold", "period_start", "notify")
    list_filter = ("metric", "threshold")


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "alert", "channel", "status", "attempts", "next_attempt_at")
    list_filter = ("status", "channel")
