"""The gateway's event-loop batching, against an in-memory Redis: each request its own vectors or error.

A fake for the one part that needs a worker: the test answers each published batch itself, with
the stored-result bytes and the notice a worker's batch task writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import fakeredis
import numpy as np
import pytest

from producer.batching import BatchLimits
from producer.celery_config import build_celery_app
from producer.errors import BrokerUnavailableError, InvalidInputError, ResultTimeoutError
from producer.protocol.batches import BatchItem, encode_notice
from producer.protocol.messages import EmbedResult
from producer.settings import Settings
from worker.gateway.batcher import LoopBatcher

MODEL = "tests/fake-model"
DIM = 4


class FakeClient:
    """What the batcher uses of an EmbeddingClient: its model and queue, the queue check, the send."""

    model = MODEL
    queue = "embedq.fake"

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[BatchItem]]] = []

    def check_queue(self, queue: str) -> None:
        pass

    def send_batch(self, reply_to: str, items: Sequence[BatchItem]) -> None:
        self.sent.append((reply_to, list(items)))


def vector_of(text: str) -> np.ndarray:
    return np.full((1, DIM), float(len(text)), dtype=np.float32)


async def answer(redis: Any, app: Any, reply_to: str, items: list[BatchItem], fail: str | None) -> None:
    """Store and announce each item's outcome as a batch task does; the item whose text is ``fail`` fails."""
    backend = app.backend
    stored = []
    for item in items:
        if item.texts[0] == fail:
            meta = backend._get_result_meta(
                backend.prepare_exception(InvalidInputError("texts[0] is not allowed")), "FAILURE", None, None
            )
        else:
            result = EmbedResult.from_array(MODEL, vector_of(item.texts[0]), [len(item.texts[0])])
            meta = backend._get_result_meta(result.encode(), "SUCCESS", None, None)
        stored.append((item.id, backend.encode({**meta, "task_id": item.id})))
    await redis.publish(reply_to, encode_notice(stored))


def test_each_request_gets_its_own_vectors_or_its_own_error_and_a_silent_batch_times_out() -> None:
    app = build_celery_app(Settings(broker_url="redis://127.0.0.1:1/0"), "tests-batcher")
    redis = fakeredis.aioredis.FakeRedis()
    client = FakeClient()

    async def scenario() -> None:
        batcher = LoopBatcher(app, redis, BatchLimits(wait_ms=5, max_texts=8), max_queue_depth=100)
        texts = ["a" * n for n in range(1, 13)]  # 12 requests: more than one batch of at most 8 texts
        requests = [
            asyncio.ensure_future(batcher.embed(client, "document", [text], timeout_s=5.0)) for text in texts
        ]
        while sum(len(items) for _, items in client.sent) < len(texts):
            await asyncio.sleep(0.01)
        assert all(len(items) <= 8 for _, items in client.sent) and len(client.sent) >= 2
        for reply_to, items in client.sent:
            await answer(redis, app, reply_to, items, fail="aaa")
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        for text, outcome in zip(texts, outcomes, strict=True):
            if text == "aaa":
                assert isinstance(outcome, InvalidInputError)
            else:
                assert not isinstance(outcome, BaseException)
                np.testing.assert_array_equal(outcome.vectors, vector_of(text))
                assert outcome.tokens == len(text)
        client.sent.clear()
        with pytest.raises(ResultTimeoutError, match=r"not done after 0\.3 s"):
            await batcher.embed(client, "query", ["never answered"], timeout_s=0.3)
        await batcher.close()

    asyncio.run(scenario())
    app.close()


class FailingClient(FakeClient):
    """A client whose broker refuses the first send."""

    def send_batch(self, reply_to: str, items: Sequence[BatchItem]) -> None:
        super().send_batch(reply_to, items)
        if len(self.sent) == 1:
            raise BrokerUnavailableError("the broker at redis://x does not answer")


def test_a_failed_send_fails_its_requests_and_frees_its_slot_for_the_next_batch() -> None:
    app = build_celery_app(Settings(broker_url="redis://127.0.0.1:1/0"), "tests-batcher")
    redis = fakeredis.aioredis.FakeRedis()
    client = FailingClient()

    async def scenario() -> None:
        batcher = LoopBatcher(app, redis, BatchLimits(wait_ms=1, max_in_flight=1), max_queue_depth=100)
        with pytest.raises(BrokerUnavailableError):
            await batcher.embed(client, "document", ["lost"], timeout_s=5.0)
        started = asyncio.get_running_loop().time()
        second = asyncio.ensure_future(batcher.embed(client, "document", ["kept"], timeout_s=5.0))
        while len(client.sent) < 2:
            await asyncio.sleep(0.005)
        # Sent at once: the failed batch no longer counts as one in flight (else: a second's wait).
        assert asyncio.get_running_loop().time() - started < 0.5
        await answer(redis, app, *client.sent[1], fail=None)
        np.testing.assert_array_equal((await second).vectors, vector_of("kept"))
        await batcher.close()

    asyncio.run(scenario())
    app.close()
