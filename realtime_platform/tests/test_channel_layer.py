from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer
from channels_redis.core import RedisChannelLayer
from django.conf import settings


@pytest.mark.redis
async def test_redis_channel_layer_carries_group_messages_between_processes():
    """Two layer instances stand for two daphne processes: a control message sent to a group on
    one reaches a socket's channel on the other (how a kill switch finds its session)."""
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    sender, receiver = RedisChannelLayer(**config), RedisChannelLayer(**config)
    channel = await receiver.new_channel("relay.")
    await receiver.group_add("tenant.test", channel)
    try:
        await sender.group_send("tenant.test", {"type": "relay.terminate", "reason": "revoked"})
        message = await asyncio.wait_for(receiver.receive(channel), timeout=2)
        assert message == {"type": "relay.terminate", "reason": "revoked"}
    finally:
        await receiver.group_discard("tenant.test", channel)
        await sender.flush()


@pytest.mark.redis
def test_configured_layer_is_redis_when_redis_url_is_set():
    assert isinstance(get_channel_layer(), RedisChannelLayer)
