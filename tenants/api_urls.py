from django.urls import path

from tenants.apis import ApiKeyDetailApi, ApiKeyListApi, ApiKeyRevokeApi, TenantDetailApi

urlpatterns = [
    path("tenant", TenantDetailApi.as_view(), name="api-tenant"),
    path("api_keys", ApiKeyListApi.as_view(), name="api-keys"),
    path("api_keys/<int:key_id>", ApiKeyDetailApi.as_view(), name="api-key-detail"),
    path("api_keys/<int:key_id>/revoke", ApiKeyRevokeApi.as_view(), name="api-key-revoke"),
]
