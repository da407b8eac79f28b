"""Bulk vectors stored under a key of their own beside the result record, through a real server and worker."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import redis

from producer import EmbeddingClient
from producer.errors import MessageDecodeError
from producer.protocol.messages import EmbedRequest, EmbedResult
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from producer.protocol.vectors_apart import APART_MIN_BYTES, VECTORS_KEY_FIELD, vectors_key
from tests.support.workers import WorkerProcess
from worker.encoding.encoder import StaticEncoder

pytestmark = pytest.mark.integration

# 300 texts of a 256-dimension model: 300 KB of vectors, above the size that is stored apart.
TEXTS = [f"document {index}: about {index % 7} quick brown foxes and a lazy dog" for index in range(300)]


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    return StaticEncoder.from_pretrained(None)


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _record(client: EmbeddingClient, broker: redis.Redis, task_id: str) -> dict[str, object]:
    raw = broker.get(client.app.backend.get_key_for_task(task_id))
    assert raw is not None
    meta = msgpack.unpackb(raw)
    assert meta["status"] == "SUCCESS"
    record: dict[str, object] = meta["result"]
    return record


def test_bulk_vectors_are_stored_apart_and_read_back_exactly(
    redis_url: str, worker: WorkerProcess, broker: redis.Redis, encoder: StaticEncoder
) -> None:
    with EmbeddingClient(redis_url, max_texts_per_task=150, batch_wait_ms=None) as client:
        job = client.embed_documents(TEXTS)
        vectors = job.result(timeout_s=30)
        np.testing.assert_array_equal(vectors, encoder.encode(TEXTS))
        assert job.token_counts is not None and len(job.token_counts) == len(TEXTS)
        assert len(job.task_ids) == 2
        for task_id in job.task_ids:
            record = _record(client, broker, task_id)
            assert "vectors" not in record and record[VECTORS_KEY_FIELD] == vectors_key(task_id)
            stored = broker.get(vectors_key(task_id))
            assert stored is not None and len(stored) == int(record["count"]) * 256 * 4  # type: ignore[call-overload]
            record_ttl = broker.ttl(client.app.backend.get_key_for_task(task_id))
            # The vectors outlive the record that names them.
            assert 0 < record_ttl < broker.ttl(vectors_key(task_id))
        # Readable by id from another client, as any result.
        with EmbeddingClient(redis_url, batch_wait_ms=None) as other:
            np.testing.assert_array_equal(other.job(job.id).result(timeout_s=5), vectors)
            assert other.status(job.id).state == "done"
            # The generic reader puts the vectors back in the record.
            (outcome,) = other.reader.outcomes([job.task_ids[1]])
            part = EmbedResult.decode(outcome.value)
            np.testing.assert_array_equal(part.to_array(), vectors[150:])


def test_small_results_and_requests_of_older_producers_keep_their_vectors_inline(
    redis_url: str, worker: WorkerProcess, broker: redis.Redis, encoder: StaticEncoder
) -> None:
    few = TEXTS[: APART_MIN_BYTES // (256 * 4) - 1]
    with EmbeddingClient(redis_url, batch_wait_ms=None) as client:
        small = client.embed_documents(few)
        np.testing.assert_array_equal(small.result(timeout_s=30), encoder.encode(few))
        assert isinstance(_record(client, broker, small.task_ids[0])["vectors"], bytes)
        # A request without the flag, as a producer of the previous release sends it.
        request = EmbedRequest(client.model, "document", tuple(TEXTS)).encode()
        assert "vectors_apart" not in request
        sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[request], queue=client.queue)
        np.testing.assert_array_equal(client.job(sent.id).result(timeout_s=30), encoder.encode(TEXTS))
        record = _record(client, broker, sent.id)
        assert isinstance(record["vectors"], bytes) and VECTORS_KEY_FIELD not in record
        assert broker.exists(vectors_key(sent.id)) == 0


def test_vectors_gone_from_redis_are_a_typed_error_that_names_the_fix(
    redis_url: str, worker: WorkerProcess, broker: redis.Redis
) -> None:
    with EmbeddingClient(redis_url, max_texts_per_task=150, batch_wait_ms=None) as client:
        job = client.embed_documents(TEXTS)
        job.result(timeout_s=30)
        broker.delete(vectors_key(job.task_ids[1]))  # evicted, or expired
        with pytest.raises(MessageDecodeError, match=r"no longer in Redis .*send the request again"):
            client.job(job.id).result(timeout_s=5)
        status = client.status(job.id)
        assert (status.state, status.error_type) == ("done", None)  # the record itself is there
        (outcome,) = client.reader.outcomes([job.task_ids[1]])
        assert outcome.state == "failed" and isinstance(outcome.error, MessageDecodeError)
        # The other parts still read.
        (fine,) = client.reader.outcomes([job.task_ids[0]])
        assert fine.state == "done" and EmbedResult.decode(fine.value).count == 150
    assert worker.process.poll() is None


def test_a_split_job_waits_on_its_tasks_channels_instead_of_polling(
    redis_url: str, worker: WorkerProcess, encoder: StaticEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = TEXTS * 8  # 2,400 texts in tasks of 150: 16 tasks, about a second of the worker's time
    reads: list[int] = []
    with EmbeddingClient(redis_url, max_texts_per_task=150, batch_wait_ms=None) as client:
        reader_outcomes = client.reader.outcomes

        def counted(task_ids: list[str], **options: bool) -> object:
            reads.append(len(task_ids))
            return reader_outcomes(task_ids, **options)

        monkeypatch.setattr(client.reader, "outcomes", counted)
        job = client.embed_documents(texts)
        assert len(job.task_ids) == 16
        np.testing.assert_array_equal(job.result(timeout_s=60), encoder.encode(texts))
    # One read after subscribing, then one per burst of states (STARTED, then the result, of
    # each task) and a check every 0.25 s: polling from 0.5 ms read 10-20 times per task.
    assert len(reads) <= 2 * 16 + 8, reads
