"""How a backfill reads the live pool processes of its model's bulk queue from the broker."""

from __future__ import annotations

from collections.abc import Callable

from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from producer.protocol.fleet import live_pool_processes


def pool_reader(client: EmbeddingClient) -> Callable[[], int]:
    """Return a function that counts the pool processes serving ``client``'s bulk queue now."""

    def read() -> int:
        with broker_client(client.app) as redis:
            return live_pool_processes(redis, client.bulk_queue)

    return read
