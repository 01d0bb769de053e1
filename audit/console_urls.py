"""Console pages of the audit trail, under /console/<tenant_slug>/audit/ (names in "console")."""

from django.urls import path

from audit import console_views as views

urlpatterns = [
    path("", views.audit_events, name="audit"),
    path("events/<int:seq>/", views.audit_event, name="audit-event"),
    path("export/", views.audit_export, name="audit-export"),
    path("integrity/", views.audit_integrity, name="audit-integrity"),
]
