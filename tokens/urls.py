"""Routes of the client-secret API: `v1_urlpatterns` (OpenAI-compatible, under /v1/) and
`api_urlpatterns` (management, under /api/v1/)."""

from django.urls import path, register_converter

from tokens.apis import (
    ClientSecretCreateApi,
    ClientSecretDetailApi,
    ClientSecretListApi,
    ClientSecretRevokeApi,
    IssuanceUsageApi,
)


class ClientSecretIdConverter:
    regex = "cs_[A-Za-z0-9]{21}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ClientSecretIdConverter, "client_secret_id")

v1_urlpatterns = [
    path("realtime/client_secrets", ClientSecretCreateApi.as_view(), name="v1-client-secrets"),
]

api_urlpatterns = [
    path("client_secrets", ClientSecretListApi.as_view(), name="api-client-secrets"),
    path("client_secrets/usage", IssuanceUsageApi.as_view(), name="api-client-secrets-usage"),
    path(
        "client_secrets/<client_secret_id:secret_id>",
        ClientSecretDetailApi.as_view(),
        name="api-client-secret-detail",
    ),
    path(
        "client_secrets/<client_secret_id:secret_id>/revoke",
        ClientSecretRevokeApi.as_view(),
        name="api-client-secret-revoke",
    ),
]
