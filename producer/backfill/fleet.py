"""How a backfill reads the pools of the live workers of its model's bulk queue from the broker."""

from __future__ import annotations

from collections.abc import Callable

from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.protocol.fleet import PoolPresence, live_pools


def pool_reader(client: EmbeddingClient) -> Callable[[], list[PoolPresence]]:
    """Return a function that reads the pools of the workers serving ``client``'s bulk queue now."""

    def read() -> list[PoolPresence]:
        with broker_client(client.app) as redis:
            return live_pools(redis, client.bulk_queue)

    return read
