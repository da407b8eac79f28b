"""Large results are published on their task channel only when a waiter subscribed to it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from producer.celery_config import PUBLISH_ALWAYS_MAX_BYTES, build_celery_app
from producer.settings import Settings


def _published(pubsub: Any, wait_s: float = 0.5) -> list[bytes]:
    """Channels of the messages ``pubsub`` received within ``wait_s``."""
    channels = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            channels.append(message["channel"])
    return channels


def test_large_results_reach_subscribers_and_skip_the_publish_otherwise(redis_url: str) -> None:
    app = build_celery_app(Settings(broker_url=redis_url), "test-publish")
    backend = app.backend
    client: Any = redis.Redis.from_url(redis_url)
    watched, unwatched, small = (str(uuid.uuid4()) for _ in range(3))
    keys = {task_id: backend.get_key_for_task(task_id) for task_id in (watched, unwatched, small)}
    waiter = client.pubsub()  # what Celery's own AsyncResult.get() does: SUBSCRIBE to the task's key
    waiter.subscribe(keys[watched])
    observer = client.pubsub()  # pattern subscribers are not counted by PUBSUB NUMSUB
    observer.psubscribe(backend.get_key_for_task("*"))
    try:
        waiter.get_message(timeout=1)
        observer.get_message(timeout=1)
        big = b"\x01" * (PUBLISH_ALWAYS_MAX_BYTES * 2)
        backend.mark_as_done(watched, big)
        backend.mark_as_done(unwatched, big)
        backend.mark_as_done(small, b"\x01" * 16)

        waiter_got = _published(waiter)
        seen = _published(observer)
        assert waiter_got == [keys[watched]]
        assert backend.decode_result(client.get(keys[watched]))["result"] == big
        assert backend.decode_result(client.get(keys[unwatched]))["result"] == big
        assert client.ttl(keys[unwatched]) > 0
        assert keys[unwatched] not in seen
        assert keys[watched] in seen and keys[small] in seen
    finally:
        waiter.close()
        observer.close()
        client.delete(*keys.values())
        client.close()
        app.close()
