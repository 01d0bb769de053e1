"""The OpenAPI document at /api/schema/ covers both surfaces, errors included, and is valid 3.1."""

from __future__ import annotations

import pytest
import yaml
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(api_client):
    response = api_client.get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_schema_is_valid_openapi_31(schema):
    assert schema["openapi"] == "3.1.0"
    validate(schema)


def test_the_openai_compatible_endpoint_is_described_with_its_request_and_errors(schema):
    operation = schema["paths"]["/v1/realtime/client_secrets"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ClientSecretCreateRequest"}
    request = schema["components"]["schemas"]["ClientSecretCreateRequest"]
    assert request["additionalProperties"] is False
    assert set(request["properties"]) == {"expires_after", "session"}
    assert {"RealtimeSession", "TranscriptionSession", "McpTool", "ServerVad"} <= set(
        schema["components"]["schemas"]
    )
    for status in ("400", "401", "403", "409", "413", "422", "429", "500", "502", "503"):
        content = operation["responses"][status]["content"]["application/json"]["schema"]
        assert content == {"$ref": "#/components/schemas/ErrorResponse"}
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])


def test_every_operation_documents_its_errors(schema):
    paths = schema["paths"]
    assert {
        "/api/v1/client_secrets",
        "/api/v1/client_secrets/{secret_id}/revoke",
        "/api/v1/client_secrets/usage",
    } <= set(paths)
    for path, operations in paths.items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "500"} <= codes, (path, method)
            if "{" in path:
                assert "404" in codes, (path, method)


def test_the_docs_page_renders(api_client):
    response = api_client.get("/api/docs/")
    assert response.status_code == 200
    assert b"/api/schema/" in response.content
