"""The message guard on a Sentinel broker: kombu's Sentinel channel with the guarded channel's checks.

``install_message_guard`` names the guarded plain-Redis transport; a ``sentinel://`` broker needs
kombu's Sentinel transport (it asks the sentinels for the current primary on every connection,
so a worker follows a failover by reconnecting), with the same guard on top.
"""

from __future__ import annotations

from celery import Celery
from kombu.transport import redis as kombu_redis

from producer.sentinel import is_sentinel_url
from worker.queue.guard import GuardedChannel


class GuardedSentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, dropping queue items it cannot turn into a message."""


class GuardedSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with :class:`GuardedSentinelChannel`."""

    Channel = GuardedSentinelChannel


def install_sentinel_guard(app: Celery) -> None:
    """Use the guarded Sentinel transport when the worker's broker URL names sentinels."""
    if is_sentinel_url(str(app.conf.broker_url or "")):
        app.conf.broker_transport = (
            f"{GuardedSentinelTransport.__module__}:{GuardedSentinelTransport.__name__}"
        )
