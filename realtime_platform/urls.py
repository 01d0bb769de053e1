from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from realtime_platform.console_auth import AdminLoginForm
from realtime_platform.health import healthz
from realtime_platform.views import index
from tokens.urls import api_urlpatterns, v1_urlpatterns

# Operators' admin: its sign-in is throttled and audited like the console's.
admin.site.login_form = AdminLoginForm
admin.site.site_header = "Realtime Platform operations"
admin.site.site_title = "Realtime Platform admin"
admin.site.index_title = "Tenants, plans and records"

urlpatterns = [
    path("", index, name="index"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("console/", include("realtime_platform.console_urls")),
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/", include("relay.urls")),
    path("api/v1/", include(api_urlpatterns)),
    path("v1/", include(v1_urlpatterns)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
]

handler404 = "realtime_platform.views.not_found"
handler500 = "realtime_platform.views.server_error"
