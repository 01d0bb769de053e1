"""URLs of the tenant console, all under /console/ and in the "console" namespace.

Per-tenant pages are `/console/<tenant_slug>/…`. Each app lists its pages in its own
`console_urls.py` (plain `urlpatterns`, no `app_name`, so their names join this namespace) and
is included below under the tenant slug; every view there is guarded by
`realtime_platform.console.console_view`.
"""

from django.urls import include, path

from realtime_platform.console import console_home
from realtime_platform.console_auth import ConsoleLoginView, console_logout

app_name = "console"

urlpatterns = [
    path("", console_home, name="home"),
    path("login/", ConsoleLoginView.as_view(), name="login"),
    path("logout/", console_logout, name="logout"),
    path("<slug:tenant_slug>/", include("tenants.console_urls")),
    path("<slug:tenant_slug>/usage/", include("usage.console_urls")),
    path("<slug:tenant_slug>/secrets/", include("tokens.console_urls")),
    path("<slug:tenant_slug>/sessions/", include("relay.console_urls")),
    path("<slug:tenant_slug>/audit/", include("audit.console_urls")),
]
