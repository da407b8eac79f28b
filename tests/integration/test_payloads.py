"""Bulk requests stored beside their task messages, through a real Redis-protocol server and worker."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import redis

from producer import EmbeddingClient
from producer.errors import MessageDecodeError
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from producer.protocol.payloads import INLINE_MAX_BYTES, PAYLOAD_KEY_PREFIX, PayloadRef, payload_key
from tests.support.workers import WorkerProcess
from worker.encoding.encoder import StaticEncoder

pytestmark = pytest.mark.integration

# About 260 KB of msgpack: above the inline limit, so it travels beside its message (and above
# the batching limit of characters, so it is a task of its own).
BIG = [f"paragraph {index}: " + "the quick brown fox jumps over the lazy dog " * 30 for index in range(200)]


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _payload_keys(broker: redis.Redis) -> list[bytes]:
    return list(broker.scan_iter(match=PAYLOAD_KEY_PREFIX + "*"))


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def _wait_until(condition: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_a_large_request_is_stored_beside_a_small_message(redis_url: str, broker: redis.Redis) -> None:
    assert len(msgpack.packb(EmbedRequest("org/nobody", "document", tuple(BIG)).encode())) > INLINE_MAX_BYTES
    with EmbeddingClient(redis_url, model="org/nobody", worker_wait_s=None, batch_wait_ms=None) as client:
        job = client.embed_documents(BIG, timeout_s=30)
        small = client.embed_documents(["a short one"], timeout_s=30)
        raw_messages = broker.lrange(client.queue, 0, -1)
    try:
        arguments = {}
        for raw in raw_messages:
            envelope = json.loads(raw)
            args = msgpack.unpackb(base64.b64decode(envelope["body"]))[0]
            arguments[envelope["headers"]["id"]] = args[0]
        assert len(raw_messages[0]) < 2_000  # the message itself stays small
        ref = PayloadRef.from_argument(arguments[job.task_ids[0]])
        assert ref is not None and ref.key == payload_key(job.task_ids[0])
        stored = broker.get(ref.key)
        assert stored is not None and len(stored) == ref.size
        assert msgpack.unpackb(stored)["texts"] == BIG
        assert 30 < broker.ttl(ref.key) <= 90  # a minute past the request's own deadline
        assert arguments[small.task_ids[0]]["texts"] == ["a short one"]  # small requests stay inline
    finally:
        broker.delete(client.queue, *(payload_key(task_id) for task_id in job.task_ids))


def test_a_stored_request_is_answered_then_deleted(
    redis_url: str, worker: WorkerProcess, broker: redis.Redis
) -> None:
    encoder = StaticEncoder.from_pretrained(None)
    with EmbeddingClient(redis_url) as client:
        job = client.embed_documents(BIG)
        key = payload_key(job.task_ids[0])
        vectors = job.result(timeout_s=30)
    assert np.abs(vectors - encoder.encode(BIG)).max() == 0
    assert _wait_until(lambda: broker.exists(key) == 0), "the stored request outlived its answer"


def test_a_redelivered_answered_task_is_dropped_and_a_missing_request_fails_by_id(
    redis_url: str, worker: WorkerProcess, broker: redis.Redis
) -> None:
    with EmbeddingClient(redis_url) as client:
        job = client.embed_documents(BIG)
        first = job.result(timeout_s=30)
        (task_id,) = job.task_ids
        key = payload_key(task_id)
        assert _wait_until(lambda: broker.exists(key) == 0)
        # The same message again, as after a pool process died between storing and acking.
        ref = PayloadRef(key=key, size=123).encode()
        client.app.send_task(TASK_EMBED_DOCUMENTS, args=[ref], task_id=task_id, queue=client.bulk_queue)
        assert _wait_until(lambda: worker.received_count(task_id) >= 2)
        assert _wait_until(lambda: f"task {task_id} was already answered" in worker.log())
        again = client.job(task_id).result(timeout_s=5)
        np.testing.assert_array_equal(first, again)
        # A reference to a request that was never stored (or expired) fails by id, once.
        lost = client.app.send_task(
            TASK_EMBED_DOCUMENTS,
            args=[PayloadRef(key=payload_key("lost"), size=10).encode()],
            queue=client.queue,
        )
        with pytest.raises(MessageDecodeError, match="no longer on the broker"):
            client.job(lost.id).result(timeout_s=30)
    assert worker.process.poll() is None


@pytest.mark.parametrize(
    ("stored", "size", "complaint"),
    [
        (msgpack.packb(_nested(200)), None, "nests deeper"),
        (b"\xc1 not msgpack", None, "not valid msgpack"),
        (msgpack.packb({"v": 1}), 99, "holds 4 bytes, its task says 99"),
    ],
)
def test_a_hostile_stored_request_fails_by_id_and_the_worker_serves_on(
    redis_url: str,
    worker: WorkerProcess,
    broker: redis.Redis,
    stored: bytes,
    size: int | None,
    complaint: str,
) -> None:
    pools_before = worker.pool_pids()
    with EmbeddingClient(redis_url) as client:
        key = payload_key(f"hostile-{time.monotonic_ns()}")
        broker.set(key, stored, ex=60)
        ref = PayloadRef(key=key, size=len(stored) if size is None else size).encode()
        sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[ref], queue=client.queue)
        with pytest.raises(MessageDecodeError, match=complaint):
            client.job(sent.id).result(timeout_s=30)
        assert client.embed_documents(["still serving"]).result(timeout_s=30).shape[0] == 1
    assert _wait_until(lambda: broker.exists(key) == 0)  # a final failure deletes it too
    assert worker.process.poll() is None and worker.pool_pids() == pools_before
