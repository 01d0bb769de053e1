"""ASGI entry point: Django for HTTP, Channels for the realtime WebSocket."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realtime_platform.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs Django set up)

from relay.routing import websocket_urlpatterns  # noqa: E402
from tokens.asgi import IssuanceFastPath  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": IssuanceFastPath(django_asgi_app),  # POST /v1/realtime/client_secrets; the rest: Django
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

# Without OPENAI_API_KEY the built-in OpenAI emulator answers under UPSTREAM_EMULATOR_PREFIX, in
# this same process (HTTP and WebSocket); the mount checks settings.UPSTREAM_EMULATOR per request.
from django.conf import settings  # noqa: E402

from upstream.emulator import EmulatorMount  # noqa: E402

application = EmulatorMount(application, prefix=settings.UPSTREAM_EMULATOR_PREFIX)
