from __future__ import annotations

import time

import numpy as np
from celery import Celery

from producer.errors import DeadlineExceededError, InvalidInputError, ModelMismatchError, TaskFailedError
from producer.job import ResultReader
from producer.protocol.batches import TASK_EMBED_BATCH, BatchItem, BatchRequest, decode_notice
from producer.protocol.messages import EmbedResult
from tests.support.fakes import FakeEncoder
from worker.queue.batch_task import register_batch_task
from worker.queue.tasks import TextLimits

LIMITS = TextLimits(max_texts=3, max_text_chars=10)


class BrokenEncoder(FakeEncoder):
    def encode(self, texts: object) -> np.ndarray:
        raise RuntimeError("the table is gone")


def _run(app: Celery, batch: BatchRequest, encoder: FakeEncoder) -> None:
    register_batch_task(app, encoder, LIMITS)
    app.tasks[TASK_EMBED_BATCH].apply(args=[batch.encode()])


def test_each_request_of_a_batch_is_answered_alone_under_its_own_id(fake_app: Celery) -> None:
    encoder = FakeEncoder()
    pubsub = fake_app.backend.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("embedq:reply:test")
    batch = BatchRequest(
        "org/fake",
        (
            BatchItem("ok-1", "query", ("a", "bbb")),
            BatchItem("too-long", "document", ("fine", "x" * 11)),
            BatchItem("late", "query", ("never encoded",), time.time() - 5),
            BatchItem("ok-2", "document", ("cc",), time.time() + 60),
        ),
        reply_to="embedq:reply:test",
    )
    _run(fake_app, batch, encoder)
    ok1, too_long, late, ok2 = ResultReader(fake_app).outcomes(["ok-1", "too-long", "late", "ok-2"])
    assert encoder.calls == 1  # one encode for the whole batch
    assert EmbedResult.decode(ok1.value).view()[:, 0].tolist() == [1, 3]
    assert EmbedResult.decode(ok2.value).view()[:, 0].tolist() == [2]
    assert isinstance(too_long.error, InvalidInputError) and "texts[1]" in str(too_long.error)
    assert isinstance(late.error, DeadlineExceededError) and "dropped unencoded" in str(late.error)
    messages = [pubsub.get_message(timeout=0.2) for _ in range(3)]  # the first may be the subscription
    message = next(message for message in messages if message is not None)
    assert [item_id for item_id, _ in decode_notice(message["data"])] == ["ok-1", "too-long", "late", "ok-2"]
    backend = fake_app.backend
    for item_id in ("ok-1", "too-long"):  # every record expires as Celery's own would
        ttl = backend.client.ttl(backend.get_key_for_task(item_id))
        assert 0 < ttl <= int(backend.expires)


def test_a_batch_for_another_model_fails_each_request_with_the_model_named(fake_app: Celery) -> None:
    batch = BatchRequest("org/other", (BatchItem("a", "query", ("x",)), BatchItem("b", "query", ("y",))))
    _run(fake_app, batch, FakeEncoder())
    outcomes = ResultReader(fake_app).outcomes(["a", "b"])
    assert all(isinstance(outcome.error, ModelMismatchError) for outcome in outcomes)
    assert "'org/other'" in str(outcomes[0].error)


def test_a_batch_that_fails_as_a_whole_fails_every_request_by_id(fake_app: Celery) -> None:
    batch = BatchRequest("org/fake", (BatchItem("a", "query", ("x",)), BatchItem("b", "query", ("y",))))
    _run(fake_app, batch, BrokenEncoder())
    outcomes = ResultReader(fake_app).outcomes(["a", "b"])
    assert [outcome.state for outcome in outcomes] == ["failed", "failed"]
    assert all(isinstance(outcome.error, TaskFailedError) for outcome in outcomes)
    assert "RuntimeError: the table is gone" in str(outcomes[0].error)
