"""Producer to worker through a real Redis-protocol server and real prefork worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from producer import EmbeddingClient, Model2VecEmbeddingFunction
from producer.errors import InvalidInputError, MessageDecodeError, ModelMismatchError, NoWorkerError
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from tests.support.models import build_model
from tests.support.workers import (
    REPO_ROOT,
    TEST_MAX_TEXTS_PER_REQUEST,
    WorkerProcess,
    start_worker,
    stop_worker,
)
from worker.encoding.encoder import StaticEncoder

pytestmark = pytest.mark.integration

TEXTS = [
    "Artificial intelligence was founded as an academic discipline in 1956.",
    "",
    "   ",
    "Ünïcödé, ñ and emoji 😀 travel intact.",
    "日本語のテキストも送れます。",
    "punctuation... only!!! ???",
    "A much longer text. " * 2000,
    "x",
    "Born in Maida Vale, London, Turing was raised in southern England.",
    "query: where was Alan Turing born?",
]


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    """The same model, in this process: the reference every worker result must equal."""
    return StaticEncoder.from_pretrained(None)


@pytest.fixture
def client(redis_url: str, worker: WorkerProcess) -> Iterator[EmbeddingClient]:
    with EmbeddingClient(redis_url, max_texts_per_task=4) as client:
        yield client


def _wait_for_state(client: EmbeddingClient, task_id: str, state: str, timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = client.app.backend.get_task_meta(task_id)
        if meta["status"] == state:
            return meta
        time.sleep(0.005)
    pytest.fail(f"task {task_id} did not reach {state}")


def test_the_worker_runs_a_pool_of_two_and_answers_control_pings(
    worker: WorkerProcess, client: EmbeddingClient
) -> None:
    assert len(worker.pool_pids()) == 2
    replies = client.app.control.ping(timeout=5, limit=1)
    assert replies and next(iter(replies[0])).startswith("celery@")


def test_documents_round_trip_equals_in_process_encoding(
    client: EmbeddingClient, encoder: StaticEncoder
) -> None:
    job = client.embed_documents(TEXTS)
    assert len(job.task_ids) == 4  # at most 4 texts a task, a multiple of the 2 pool processes, in order
    vectors = job.result(timeout_s=30)
    expected = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), encoder.dim)
    assert np.abs(vectors - expected).max() == 0


def test_queries_round_trip_async_and_through_the_embedding_function(
    client: EmbeddingClient, encoder: StaticEncoder
) -> None:
    expected = encoder.encode(TEXTS)
    job = client.embed_queries(TEXTS)
    assert np.abs(asyncio.run(job.result_async(timeout_s=30)) - expected).max() == 0
    function = Model2VecEmbeddingFunction(client=client, timeout_s=30)
    assert function.dim == encoder.dim
    rows = function.encode_queries(TEXTS)
    assert len(rows) == len(TEXTS) and all(row.shape == (encoder.dim,) for row in rows)
    assert np.abs(np.stack(rows) - expected).max() == 0


def test_status_and_reattach_by_id_from_another_process(client: EmbeddingClient, redis_url: str) -> None:
    job = client.embed_documents(TEXTS)
    vectors = job.result(timeout_s=30)
    assert client.status(job.id).state == "done"
    code = (
        "import hashlib, json, sys; from producer import EmbeddingClient; "
        "client = EmbeddingClient(sys.argv[1]); job = client.job(sys.argv[2]); v = job.result(timeout_s=30); "
        "print(json.dumps([client.status(job.id).state, len(job.task_ids), list(v.shape), "
        "hashlib.sha256(v.tobytes()).hexdigest()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, redis_url, job.id],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == ["done", 4, list(vectors.shape), hashlib.sha256(vectors.tobytes()).hexdigest()]


def test_bad_input_fails_by_id_and_is_never_retried(client: EmbeddingClient, worker: WorkerProcess) -> None:
    too_long = "x" * (worker.settings.max_text_chars + 1)
    request = EmbedRequest(client.model, "document", ("fine", too_long))  # skips the producer's checks
    sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[request.encode()], queue=client.queue)
    with pytest.raises(InvalidInputError, match=r"texts\[1\] has 100001 characters"):
        client.job(sent.id).result(timeout_s=30)
    status = client.status(sent.id)
    assert (status.state, status.error_type) == ("failed", "InvalidInputError")
    assert "texts[1]" in (status.error_message or "")
    garbage = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[["not", "a", "request"]], queue=client.queue)
    with pytest.raises(MessageDecodeError, match="must be a map"):
        client.job(garbage.id).result(timeout_s=30)
    # Delivered once each: a retried task is received again (see the SIGKILL test).
    assert worker.received_count(sent.id) == 1 and worker.received_count(garbage.id) == 1
    assert f"{sent.id}] retry" not in worker.log()


def test_a_bad_message_never_crashes_the_worker(
    client: EmbeddingClient, worker: WorkerProcess, encoder: StaticEncoder
) -> None:
    pools_before = worker.pool_pids()
    request = EmbedRequest(client.model, "document", ("pickled",)).encode()
    pickled = client.app.send_task(
        TASK_EMBED_DOCUMENTS, args=[request], queue=client.queue, serializer="pickle"
    )
    unknown = client.app.send_task("embedq.no_such_task", args=[request], queue=client.queue)
    vectors = client.embed_documents(["still serving"]).result(timeout_s=30)
    assert np.abs(vectors - encoder.encode(["still serving"])).max() == 0
    deadline = time.monotonic() + 10
    log = worker.log()
    while ("refused without being decoded" not in log or "unregistered task" not in log) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
        log = worker.log()
    assert f"refused task message {pickled.id}" in log
    assert "content type 'application/x-python-serialize' is refused without being decoded" in log
    assert "Received unregistered task of type 'embedq.no_such_task'" in log
    pickled_status = client.status(pickled.id)  # never run, and its producer learns why by id
    assert (pickled_status.state, pickled_status.error_type) == ("failed", "MessageDecodeError")
    unknown_status = client.status(unknown.id)  # Celery records unknown task names as failures
    assert (unknown_status.state, unknown_status.error_type) == ("failed", "TaskFailedError")
    assert "NotRegistered" in (unknown_status.error_message or "")
    assert worker.process.poll() is None and worker.pool_pids() == pools_before


def test_a_worker_refuses_a_request_for_another_model(client: EmbeddingClient, worker: WorkerProcess) -> None:
    request = EmbedRequest("org/other-model", "document", ("hello",))
    sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[request.encode()], queue=client.queue)
    with pytest.raises(ModelMismatchError) as raised:
        client.job(sent.id).result(timeout_s=30)
    assert "'org/other-model'" in str(raised.value) and f"'{client.model}'" in str(raised.value)
    assert worker.received_count(sent.id) == 1
    other = EmbeddingClient(client.app.conf.broker_url, model="org/other-model", worker_wait_s=0.3)
    with other, pytest.raises(NoWorkerError, match=r"embedq\.org/other-model"):
        other.embed_documents(["hello"])


def test_a_pool_process_killed_mid_task_does_not_lose_the_request(
    redis_url: str, worker: WorkerProcess, encoder: StaticEncoder
) -> None:
    rng = random.Random(7)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "cats", "sleep"]
    texts = [" ".join(rng.choice(words) for _ in range(150)) for _ in range(TEST_MAX_TEXTS_PER_REQUEST // 2)]
    big = EmbeddingClient(redis_url, max_texts_per_task=TEST_MAX_TEXTS_PER_REQUEST, max_chars_per_task=10**9)
    with big:
        job = big.embed_documents(texts)  # one task of about a second
        (task_id,) = job.task_ids
        started = _wait_for_state(big, task_id, "STARTED")
        pid = started["result"]["pid"]
        assert pid in worker.pool_pids()
        os.kill(pid, signal.SIGKILL)
        vectors = job.result(timeout_s=60)
        assert big.status(job.id).state == "done"
    assert np.abs(vectors - encoder.encode(texts)).max() == 0
    assert worker.received_count(task_id) >= 2  # redelivered after the kill
    assert "WorkerLostError" in worker.log()
    assert worker.process.poll() is None


def test_query_only_workers_answer_while_a_bulk_backlog_waits_for_bulk_workers(
    redis_url: str, tmp_path: Path
) -> None:
    model_dir = build_model(tmp_path / "model")  # a model, and so queues, of this test's own
    model = str(model_dir)
    queries_worker = start_worker(redis_url, tmp_path / "queries.log", model, queues=["interactive"])
    bulk_worker: WorkerProcess | None = None
    try:
        encoder = StaticEncoder.from_pretrained(model_dir)
        bulk_texts = [[f"bulk job {job} text {i}" for i in range(40)] for job in range(6)]
        with (
            EmbeddingClient(redis_url, model=model, bulk_min_texts=40, worker_wait_s=1.0) as client,
            EmbeddingClient(redis_url, model=model, bulk_min_texts=40, worker_wait_s=None) as unchecked,
        ):
            with pytest.raises(NoWorkerError, match=r"\.bulk"):
                client.embed_documents(bulk_texts[0])
            bulk_jobs = [unchecked.embed_documents(texts) for texts in bulk_texts]
            for i in range(5):
                query = f"a query {i}"
                vector = client.embed_queries([query]).result(timeout_s=10)
                np.testing.assert_array_equal(vector, encoder.encode([query]))
            assert all(job.status().state == "pending" for job in bulk_jobs)

            bulk_worker = start_worker(redis_url, tmp_path / "bulk.log", model, queues=["bulk"])
            for job, texts in zip(bulk_jobs, bulk_texts, strict=True):
                np.testing.assert_array_equal(job.result(timeout_s=30), encoder.encode(texts))
    finally:
        stop_worker(queries_worker)
        if bulk_worker is not None:
            stop_worker(bulk_worker)
