from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from realtime_platform.health import healthz
from realtime_platform.views import index

urlpatterns = [
    path("", index, name="index"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/", include("relay.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
]

handler404 = "realtime_platform.views.not_found"
handler500 = "realtime_platform.views.server_error"
