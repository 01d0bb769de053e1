"""Console pages of a tenant's own settings, under /console/<tenant_slug>/ (names in "console")."""

from django.urls import path

from tenants import console_views as views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("overview/quota-bars/", views.overview_quota_bars, name="overview-quota-bars"),
    path("quotas/", views.quotas, name="quotas"),
    path("quotas/limits/", views.quotas_limits_update, name="quotas-limits"),
    path("quotas/policy/", views.quotas_policy_update, name="quotas-policy"),
    path("quotas/upstream/", views.quotas_upstream_update, name="quotas-upstream"),
    path("quotas/upstream/delete/", views.quotas_upstream_delete, name="quotas-upstream-delete"),
    path("keys/", views.keys, name="keys"),
    path("keys/new/", views.key_create, name="key-create"),
    path("keys/<int:key_id>/settings/", views.key_settings, name="key-settings"),
    path("keys/<int:key_id>/rotate/", views.key_rotate, name="key-rotate"),
    path("keys/<int:key_id>/revoke/", views.key_revoke, name="key-revoke"),
    path("members/", views.members, name="members"),
    path("members/add/", views.member_add, name="member-add"),
    path("members/<int:membership_id>/role/", views.member_role, name="member-role"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="member-remove"),
]
