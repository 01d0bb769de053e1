"""Console pages of usage, under /console/<tenant_slug>/usage/ (names in "console")."""

from django.urls import path

from usage import console_views as views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/settings/", views.alerts_settings_update, name="alerts-settings"),
    path("alerts/rotate/", views.alerts_secret_rotate, name="alerts-rotate"),
]
