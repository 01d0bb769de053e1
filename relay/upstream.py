"""Where the relay gets its upstream connection: the OpenAI boundary (upstream/client.py, CONTRACTS §1).

One function, so tests replace the outside world (OpenAI) in one place and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.core import UpstreamConnector
    from tenants.models import Tenant


def upstream_connector_for(tenant: Tenant) -> UpstreamConnector:
    """The platform's key, or the tenant's own (decrypted now): call it from sync code."""
    from upstream.client import upstream_client_for

    return upstream_client_for(tenant)
