from django.contrib import admin

from realtime_platform.admin_mixins import ReadOnlyAdmin
from tokens.models import ClientSecret


@admin.register(ClientSecret)
class ClientSecretAdmin(ReadOnlyAdmin):
    list_display = ("id", "tenant", "kind", "status", "last_four", "model", "created_at", "expires_at")
    list_filter = ("kind", "status")
    search_fields = ("id", "tenant__slug")
    exclude = ("fingerprint", "lookup_prefix")
    show_full_result_count = False
