"""Console pages of client secrets, under /console/<tenant_slug>/secrets/ (names in "console")."""

from django.urls import path

from tokens import console_views as views

urlpatterns = [
    path("", views.secrets, name="secrets"),
    path("<str:secret_id>/revoke/", views.secret_revoke, name="secret-revoke"),
]
