from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import fakeredis
import numpy as np
import pytest
from celery import Celery

from producer import EmbeddingClient, Model2VecEmbeddingFunction
from producer.errors import (
    BrokerUnavailableError,
    ConfigError,
    InvalidInputError,
    ModelMismatchError,
    NoWorkerError,
    OverloadedError,
    ResultTimeoutError,
    TaskFailedError,
)
from producer.protocol.documents import Document
from producer.protocol.fleet import PoolPresence, pool_key, pool_set_key
from producer.protocol.messages import EmbedRequest, EmbedResult, WorkerPresence
from producer.protocol.names import (
    BUNDLED_MODEL_ID,
    TASK_EMBED_DOCUMENTS,
    TASK_EMBED_QUERIES,
    job_key,
    presence_key,
)
from producer.settings import Settings
from tests.support.fakes import FakeEncoder, SentTask, sent_tasks

MODEL = "org/fake"
QUEUE = f"embedq.{MODEL}"


def complete(app: Celery, task: SentTask, encoder: FakeEncoder | None = None) -> np.ndarray:
    """Store the result a worker would store for ``task``; return its vectors."""
    vectors = (encoder or FakeEncoder()).encode(task.request.texts)
    app.backend.store_result(
        task.task_id, EmbedResult.from_array(task.request.model, vectors).encode(), "SUCCESS"
    )
    return vectors


class FakeWorker(threading.Thread):
    """Serves the queue from a thread: pops each message and stores the FakeEncoder's vectors."""

    def __init__(self, app: Celery, redis: fakeredis.FakeRedis) -> None:
        super().__init__(daemon=True)
        self.app, self.redis, self.stopped = app, redis, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for task in sent_tasks(self.redis):
                self.redis.lrem(QUEUE, 0, self.redis.lrange(QUEUE, -1, -1)[0])
                complete(self.app, task)
            time.sleep(0.005)


@pytest.fixture
def client(fake_app: Celery, fake_redis: fakeredis.FakeRedis) -> EmbeddingClient:
    fake_redis.set(presence_key(QUEUE), WorkerPresence(MODEL, 4).encode())
    # One task per request: these tests read the per-request wire (tests/test_batching.py: batches).
    return EmbeddingClient(
        app=fake_app,
        model=MODEL,
        max_texts_per_task=3,
        max_queue_depth=5,
        worker_wait_s=0.2,
        batch_wait_ms=None,
    )


@pytest.fixture
def fake_worker(fake_app: Celery, fake_redis: fakeredis.FakeRedis) -> Iterator[FakeWorker]:
    worker = FakeWorker(fake_app, fake_redis)
    worker.start()
    yield worker
    worker.stopped.set()
    worker.join()


def test_one_batch_is_one_task_whose_id_is_the_job_id(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_queries(["a", "bb"])
    (task,) = sent_tasks(fake_redis)
    assert job.id == task.task_id and job.task_ids == (task.task_id,)
    assert task.name == TASK_EMBED_QUERIES
    assert task.request == EmbedRequest(MODEL, "query", ("a", "bb"), vectors_apart=True)
    assert task.content_type == "application/x-msgpack"
    assert fake_redis.get(job_key(job.id)) is None


def test_large_inputs_are_split_into_ordered_tasks(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis
) -> None:
    texts = [f"private {i}" for i in range(8)]
    job = client.embed_documents(texts)
    tasks = sent_tasks(fake_redis)
    assert [task.request.texts for task in tasks] == [tuple(texts[0:3]), tuple(texts[3:6]), tuple(texts[6:8])]
    assert {task.name for task in tasks} == {TASK_EMBED_DOCUMENTS}
    assert job.task_ids == tuple(task.task_id for task in tasks) and job.id not in job.task_ids
    # The texts stay out of what workers log and report; the job's parts outlive nothing.
    assert all("private" not in task.headers["argsrepr"] for task in tasks)
    assert 0 < fake_redis.ttl(job_key(job.id)) <= client.app.conf.result_expires


def test_results_are_reassembled_in_input_order_and_reattach_by_id(
    client: EmbeddingClient, fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_documents([f"text {'x' * i}" for i in range(8)])
    tasks = sent_tasks(fake_redis)
    parts = {task.task_id: complete(fake_app, task) for task in reversed(tasks)}
    expected = np.concatenate([parts[task.task_id] for task in tasks])
    np.testing.assert_array_equal(job.result(timeout_s=1), expected)
    other = EmbeddingClient(app=fake_app, model=MODEL, batch_wait_ms=None)
    again = other.job(job.id)
    assert again.task_ids == job.task_ids
    np.testing.assert_array_equal(again.result(timeout_s=1), expected)
    assert other.status(job.id).state == "done"


def test_status_follows_the_tasks(
    client: EmbeddingClient, fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_documents(["a"] * 6)
    first, second = sent_tasks(fake_redis)
    assert client.status(job.id) == client.status(job.id)
    assert (client.status(job.id).state, client.status(job.id).tasks_total) == ("pending", 2)
    fake_app.backend.store_result(second.task_id, {"pid": 1, "hostname": "w"}, "STARTED")
    assert client.status(job.id).state == "started"
    complete(fake_app, second)
    status = client.status(job.id)
    assert (status.state, status.tasks_done) == ("started", 1)
    fake_app.backend.mark_as_failure(first.task_id, InvalidInputError("texts[2] is None: drop it"))
    status = client.status(job.id)
    assert (status.state, status.error_type, status.error_message) == (
        "failed",
        "InvalidInputError",
        "texts[2] is None: drop it",
    )


def test_failures_come_back_typed_and_fail_fast(
    client: EmbeddingClient, fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_documents(["a"] * 6)
    _, second = sent_tasks(fake_redis)
    fake_app.backend.mark_as_failure(second.task_id, ModelMismatchError("wrong model"))
    started = time.monotonic()
    with pytest.raises(ModelMismatchError, match="wrong model"):
        job.result(timeout_s=5)  # the first task is still pending: no need to wait for it
    assert time.monotonic() - started < 1


def test_unknown_error_types_become_task_failed_errors(
    client: EmbeddingClient, fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_documents(["a"])
    fake_app.backend.mark_as_failure(job.id, ZeroDivisionError("division by zero"))
    with pytest.raises(TaskFailedError, match="ZeroDivisionError: division by zero"):
        job.result(timeout_s=1)
    assert client.status(job.id).error_type == "TaskFailedError"


def test_result_times_out_with_a_typed_error(client: EmbeddingClient) -> None:
    job = client.embed_documents(["a"])
    started = time.monotonic()
    with pytest.raises(ResultTimeoutError, match=job.id):
        job.result(timeout_s=0.1)
    assert 0.1 <= time.monotonic() - started < 1


def test_unknown_ids_read_as_pending(client: EmbeddingClient) -> None:
    assert client.status("no-such-job").state == "pending"


def test_results_of_another_model_are_refused(
    client: EmbeddingClient, fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    job = client.embed_documents(["a"])
    fake_app.backend.store_result(
        job.id, EmbedResult.from_array("org/other", np.ones((1, 4))).encode(), "SUCCESS"
    )
    with pytest.raises(ModelMismatchError, match="org/other"):
        job.result(timeout_s=1)


def test_result_async(client: EmbeddingClient, fake_worker: FakeWorker) -> None:
    async def embed() -> np.ndarray:
        job = await asyncio.to_thread(client.embed_queries, ["a", "bb", "ccc", "dddd"])
        return await job.result_async(timeout_s=5)

    vectors = asyncio.run(embed())
    assert vectors.dtype == np.float32 and vectors[:, 0].tolist() == [1, 2, 3, 4]


def test_invalid_input_is_rejected_before_enqueueing(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis
) -> None:
    with pytest.raises(InvalidInputError, match=r"texts\[1\] is bytes"):
        client.embed_documents(["ok", b"raw"])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="single str"):
        client.embed_queries("one text")
    with pytest.raises(InvalidInputError, match="empty"):
        client.embed_documents([])
    with pytest.raises(InvalidInputError, match="100001 characters"):
        client.embed_documents(["x" * 100_001])
    assert fake_redis.llen(QUEUE) == 0


def test_no_worker_error_after_waiting(client: EmbeddingClient, fake_redis: fakeredis.FakeRedis) -> None:
    fake_redis.delete(presence_key(QUEUE))
    started = time.monotonic()
    with pytest.raises(NoWorkerError, match=QUEUE):
        client.embed_documents(["a"])
    assert 0.2 <= time.monotonic() - started < 2
    assert fake_redis.llen(QUEUE) == 0


def test_a_worker_that_comes_up_in_time_is_found(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.delete(presence_key(QUEUE))
    threading.Timer(0.05, fake_redis.set, (presence_key(QUEUE), WorkerPresence(MODEL, 4).encode())).start()
    client.embed_documents(["a"])
    assert fake_redis.llen(QUEUE) == 1


def test_a_full_queue_is_refused(client: EmbeddingClient, fake_redis: fakeredis.FakeRedis) -> None:
    for _ in range(4):
        client.embed_documents(["a"])
    client.embed_documents(["a"] * 9)  # depth 4 < 5: accepted, even though it adds 3 tasks
    with pytest.raises(OverloadedError, match="holds 7 tasks, at the limit of 5"):
        client.embed_documents(["a"])
    assert fake_redis.llen(QUEUE) == 7


def test_broker_errors_are_typed(client: EmbeddingClient, fake_server: fakeredis.FakeServer) -> None:
    job = client.embed_documents(["a"])
    fake_server.connected = False
    with pytest.raises(
        BrokerUnavailableError, match=r"cannot reach the Redis broker at redis://fake-\w+\.invalid"
    ):
        client.embed_documents(["a"])
    with pytest.raises(BrokerUnavailableError, match="cannot read results"):
        job.status()


def test_model_dim_comes_from_the_live_worker(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis
) -> None:
    assert client.model_dim() == 4
    fake_redis.set(presence_key(QUEUE), WorkerPresence("org/impostor", 4).encode())
    with pytest.raises(ModelMismatchError, match="org/impostor"):
        client.model_dim()


def test_embedding_function_has_the_pymilvus_call_shape(
    client: EmbeddingClient, fake_worker: FakeWorker
) -> None:
    function = Model2VecEmbeddingFunction(client=client, timeout_s=5)
    assert function.dim == 4 and function.model_source == MODEL
    for vectors in (
        function.encode_documents(["a", "bb"]),
        function.encode_queries(["a", "bb"]),
        function(["a", "bb"]),
    ):
        assert isinstance(vectors, list) and len(vectors) == 2
        assert all(v.shape == (4,) and v.dtype == np.float32 for v in vectors)
        assert [v[0] for v in vectors] == [1, 2]
    assert function.encode_documents([]) == []


def test_constructor_checks(fake_app: Celery) -> None:
    with pytest.raises(ConfigError, match="either broker_url"):
        EmbeddingClient()
    with pytest.raises(ConfigError, match="either broker_url"):
        EmbeddingClient("redis://localhost:6379/0", app=fake_app)
    with pytest.raises(ConfigError, match="model"):
        EmbeddingClient(app=fake_app, model="two words")
    with pytest.raises(ConfigError, match="EMBEDQ_BROKER_URL"):
        EmbeddingClient("http://localhost")
    client = EmbeddingClient("redis://:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(client) and client.model == BUNDLED_MODEL_ID
    assert client.queue == f"embedq.{BUNDLED_MODEL_ID}"
    client.close()


def test_importing_producer_pulls_in_no_model_stack() -> None:
    code = (
        "import sys, producer; "
        "heavy = ('tokenizers', 'safetensors', 'pymilvus', 'worker', 'torch', 'model2vec', 'milvus_lite'); "
        "print([m for m in sys.modules if m.split('.')[0] in heavy])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_from_settings_takes_the_limits_and_model(
    fake_server: fakeredis.FakeServer, fake_redis: fakeredis.FakeRedis
) -> None:
    broker_url = f"redis://fake-{time.monotonic_ns()}.invalid:6379/0"
    settings = Settings(broker_url=broker_url, model=MODEL, max_texts_per_request=2, max_text_chars=5)
    fake_redis.set(presence_key(QUEUE), WorkerPresence(MODEL, 4).encode())
    with EmbeddingClient.from_settings(settings) as client:
        assert client.model == MODEL
        client.embed_documents(["a", "b", "c", "d", "e"])
        assert [len(task.request.texts) for task in sent_tasks(fake_redis)] == [2, 2, 1]
        with pytest.raises(InvalidInputError, match="limit of 5"):
            client.embed_documents(["toolong"])


def test_embedding_function_builds_its_own_client() -> None:
    function = Model2VecEmbeddingFunction(None, "redis://:s3cret@localhost:6379/0")
    assert function.model_source == BUNDLED_MODEL_ID and function.client.model == BUNDLED_MODEL_ID
    function.close()


BULK_QUEUE = f"{QUEUE}.bulk"


def test_large_requests_and_upserts_go_to_the_bulk_queue(
    fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    for queue in (QUEUE, BULK_QUEUE):
        fake_redis.set(presence_key(queue), WorkerPresence(MODEL, 4).encode())
    client = EmbeddingClient(
        app=fake_app, model=MODEL, max_texts_per_task=3, bulk_min_texts=5, batch_wait_ms=None
    )
    assert client.bulk_queue == BULK_QUEUE

    client.embed_queries(["q1", "q2", "q3", "q4"])
    client.embed_documents([f"d{i}" for i in range(5)])
    client.submit_upsert("docs", [Document(id="x", text="one document", metadata={})])

    assert [len(task.request.texts) for task in sent_tasks(fake_redis, QUEUE)] == [2, 2]  # equal parts
    assert fake_redis.llen(BULK_QUEUE) == 3  # 5 documents in two tasks, then the upsert
    never_bulk = EmbeddingClient(app=fake_app, model=MODEL, bulk_min_texts=None, batch_wait_ms=None)
    assert never_bulk.queue_for(10**6) == QUEUE and client.queue_for(5) == BULK_QUEUE


def test_no_worker_on_the_bulk_queue_is_named_while_queries_still_go(
    fake_app: Celery, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.set(presence_key(QUEUE), WorkerPresence(MODEL, 4).encode())  # query-only workers
    client = EmbeddingClient(
        app=fake_app, model=MODEL, bulk_min_texts=3, worker_wait_s=0.1, batch_wait_ms=None
    )
    client.embed_queries(["one query"])
    with pytest.raises(NoWorkerError, match=r"no worker consumes queue embedq\.org/fake\.bulk"):
        client.embed_documents(["a", "b", "c"])
    with pytest.raises(NoWorkerError, match=r"\.bulk"):
        client.model_dim(client.bulk_queue)
    assert client.model_dim() == 4


@pytest.mark.parametrize(
    ("processes", "sizes"),
    [(0, [3, 3, 2, 2]), (3, [2, 2, 2, 2, 1, 1]), (2, [3, 3, 2, 2]), (9, [3, 3, 2, 2])],
)
def test_a_split_job_is_cut_in_equal_parts_a_multiple_of_the_live_pool_processes(
    client: EmbeddingClient, fake_redis: fakeredis.FakeRedis, processes: int, sizes: list[int]
) -> None:
    if processes:
        fake_redis.sadd(pool_set_key(QUEUE), "w1")
        fake_redis.set(pool_key(QUEUE, "w1"), PoolPresence("w1", processes, cpus=processes).encode())
    texts = [f"t{i}" for i in range(10)]
    job = client.embed_documents(texts)
    tasks = sent_tasks(fake_redis)
    assert [len(task.request.texts) for task in tasks] == sizes  # 9 processes: 4 tasks kept, not 9
    assert [text for task in tasks for text in task.request.texts] == texts
    assert len(job.task_ids) == len(sizes)
