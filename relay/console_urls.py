"""Console pages of relayed sessions, under /console/<tenant_slug>/sessions/ (names in "console")."""

from django.urls import path

from relay import console_views as views

urlpatterns = [
    path("", views.sessions, name="sessions"),
    path("terminate-all/", views.sessions_terminate_all, name="sessions-terminate-all"),
    path("<str:session_id>/terminate/", views.session_terminate, name="session-terminate"),
]
