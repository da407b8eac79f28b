"""Coalesced small requests against real worker processes and a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import redis

from producer import EmbeddingClient, Job
from producer.batching import STALE_S
from producer.errors import DeadlineExceededError, InvalidInputError, OverloadedError, ResultTimeoutError
from producer.protocol.names import queue_for_model
from tests.support.models import build_model
from tests.support.workers import WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder

pytestmark = pytest.mark.integration

BATCH_MAX_TEXTS = 4
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "cats", "sleep"]


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    return StaticEncoder.from_pretrained()


def _batches_received(worker: WorkerProcess) -> list[str]:
    return re.findall(r"embedq\.embed_batch\[([^\]]+)\] received", worker.log())


def _texts(rng: random.Random, tag: str) -> list[str]:
    count = rng.choice([1, 1, 1, 2, 5])
    return [
        f"{tag} {i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for i in range(count)
    ]


def test_threads_and_asyncio_tasks_sharing_a_client_each_get_their_own_vectors(
    redis_url: str, worker: WorkerProcess, encoder: StaticEncoder
) -> None:
    before = len(_batches_received(worker))
    failures: list[str] = []
    with EmbeddingClient(redis_url, batch_wait_ms=5) as client:

        def one_thread(number: int) -> int:
            rng = random.Random(number)
            for request in range(15):
                texts = _texts(rng, f"thread {number} request {request}")
                job = client.embed_queries(texts) if request % 2 else client.embed_documents(texts)
                if not np.array_equal(job.result(timeout_s=30), encoder.encode(texts)):
                    failures.append(f"thread {number} request {request}")
            return 15

        async def one_task(number: int) -> int:
            rng = random.Random(1000 + number)
            for request in range(3):
                texts = _texts(rng, f"task {number} request {request}")
                vectors = await client.embed_queries(texts).result_async(timeout_s=30)
                if not np.array_equal(vectors, encoder.encode(texts)):
                    failures.append(f"task {number} request {request}")
            return 3

        async def many_tasks() -> int:
            return sum(await asyncio.gather(*(one_task(number) for number in range(64))))

        with ThreadPoolExecutor(16) as pool:
            threads = [pool.submit(one_thread, number) for number in range(16)]
            from_tasks = asyncio.run(many_tasks())  # the event loop runs while the threads send
            requests = from_tasks + sum(future.result() for future in threads)
    assert failures == []
    batches = len(_batches_received(worker)) - before
    assert requests == 16 * 15 + 64 * 3
    assert 0 < batches < requests / 2  # coalesced: several requests per task


def test_an_invalid_request_fails_alone_inside_its_batch(
    redis_url: str, worker: WorkerProcess, encoder: StaticEncoder
) -> None:
    # The client lets 150k-character texts through; the worker's limit (100k) refuses them.
    with EmbeddingClient(redis_url, batch_wait_ms=300, max_text_chars=200_000) as client:
        client.embed_queries(["warm-up"]).result(timeout_s=30)  # the window now runs from this send
        good_before = client.embed_queries(["first good"])
        bad = client.embed_documents(["fine", "x" * 150_000])
        good_after = client.embed_queries(["second good", "third"])
        assert np.array_equal(good_before.result(timeout_s=30), encoder.encode(["first good"]))
        assert np.array_equal(good_after.result(timeout_s=30), encoder.encode(["second good", "third"]))
        with pytest.raises(InvalidInputError, match=r"texts\[1\] has 150000 characters"):
            bad.result(timeout_s=30)
        status = client.status(bad.id)  # by id, as any other process would read it
        assert status.state == "failed" and status.error_type == "InvalidInputError"
        assert client.status(good_after.id).state == "done"
    assert re.search(r"embedq\.embed_batch\[[^\]]+\] succeeded in [0-9.e-]+s: 3\b", worker.log())


def test_a_pool_process_killed_mid_batch_loses_nothing_and_mixes_up_nothing(
    redis_url: str, worker: WorkerProcess, encoder: StaticEncoder
) -> None:
    rng = random.Random(11)
    big = [
        [" ".join(rng.choice(WORDS) for _ in range(250)) + f" {n}-{i}" for i in range(2000)] for n in range(2)
    ]
    requests = [big[0], *[[f"small request {n}"] for n in range(5)], big[1]]
    with EmbeddingClient(
        redis_url, batch_wait_ms=300, batch_max_texts=10_000, batch_max_chars=10**9, bulk_min_texts=None
    ) as client:
        client.embed_queries(["warm-up"]).result(timeout_s=30)
        seen = set(_batches_received(worker))
        jobs = [client.embed_documents(texts) for texts in requests]
        deadline = time.monotonic() + 30
        while not set(_batches_received(worker)) - seen:
            assert time.monotonic() < deadline, "the batch never reached the worker"
            time.sleep(0.005)
        for pid in worker.pool_pids():  # the batch has just started: it takes about a second
            os.kill(pid, signal.SIGKILL)
        results = [job.result(timeout_s=90) for job in jobs]
    for texts, vectors in zip(requests, results, strict=True):
        assert np.array_equal(vectors, encoder.encode(texts))
    log = worker.log()
    killed_at = log.rfind("exited with 'signal 9 (SIGKILL)'")
    assert killed_at != -1
    new = set(_batches_received(worker)) - seen
    assert any(
        log.find(f"embed_batch[{batch_id}] succeeded", killed_at) != -1 for batch_id in new
    )  # run again


@pytest.fixture(scope="module")
def own_model_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker of a tiny model with a queue of its own, so pausing it touches no other test."""
    folder = tmp_path_factory.mktemp("deadline")
    worker = start_worker(redis_url, folder / "worker.log", str(build_model(folder / "model")))
    try:
        yield worker
    finally:
        stop_worker(worker)


def _blocked(broker: redis.Redis, worker: WorkerProcess) -> bool:
    import psutil

    ports = {conn.laddr.port for conn in psutil.Process(worker.process.pid).net_connections("tcp")}
    return any(
        int(str(client["addr"]).rpartition(":")[2]) in ports and "b" in str(client["flags"])
        for client in broker.client_list()
    )


@contextmanager
def _paused(worker: WorkerProcess, broker: redis.Redis) -> Iterator[None]:
    """SIGSTOP the worker once its last BRPOP timed out (it takes nothing off the queue); SIGCONT after."""
    worker.process.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while _blocked(broker, worker):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield
    finally:
        worker.process.send_signal(signal.SIGCONT)


def test_a_stalled_queue_refuses_batched_requests_past_the_depth_limit(
    redis_url: str, own_model_worker: WorkerProcess
) -> None:
    model = own_model_worker.settings.model_id
    encoder = StaticEncoder.from_pretrained(model)
    broker = redis.Redis.from_url(redis_url)
    accepted: list[tuple[Job, str]] = []
    with EmbeddingClient(
        redis_url, model=model, max_queue_depth=10, worker_wait_s=None, batch_max_texts=BATCH_MAX_TEXTS
    ) as client:
        client.embed_queries(["warm-up"]).result(timeout_s=30)
        with _paused(own_model_worker, broker):
            started = time.monotonic()
            with pytest.raises(OverloadedError, match="retry later") as refused:
                for number in range(1000):
                    accepted.append((client.embed_queries([f"text {number}"]), f"text {number}"))
            # Sent while the worker is stopped: in the queue list, or taken and not yet acknowledged.
            batch_tasks_sent = broker.llen(queue_for_model(model)) + broker.hlen("unacked")
            elapsed_s = time.monotonic() - started
        # The refusal comes at the limit, and while the worker is stopped the client has sent at most
        # its two batches in flight, plus one for each second a batch went unanswered (STALE_S: on a
        # slow machine the loop above can take that long); how many requests each carries depends
        # on the sender's timing.
        assert re.match(r"10 requests of this client wait to be sent", str(refused.value))
        assert batch_tasks_sent <= 2 + int(elapsed_s / STALE_S)
        assert len(accepted) <= 10 + 2 * BATCH_MAX_TEXTS
        for job, text in accepted:
            assert np.array_equal(job.result(timeout_s=30), encoder.encode([text]))
    broker.close()


def test_a_request_whose_deadline_passed_in_the_queue_is_dropped_unencoded(
    redis_url: str, own_model_worker: WorkerProcess
) -> None:
    model = own_model_worker.settings.model_id
    broker = redis.Redis.from_url(redis_url)
    with EmbeddingClient(redis_url, model=model) as client:
        client.embed_queries(["warm-up"]).result(timeout_s=30)
        own_model_worker.process.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            while _blocked(broker, own_model_worker):  # its last BRPOP must time out first
                assert time.monotonic() < deadline
                time.sleep(0.05)
            expiring = client.embed_queries(["too late"], timeout_s=0.2)
            patient = client.embed_queries(["no deadline"])  # in the same batch or the next
            with pytest.raises(ResultTimeoutError, match=r"its queue holds [12] tasks"):
                patient.result(timeout_s=0.5)
        finally:
            own_model_worker.process.send_signal(signal.SIGCONT)
        with pytest.raises(DeadlineExceededError, match=r"dropped unencoded.*held \d+ tasks") as raised:
            expiring.result(timeout_s=30)
        assert isinstance(raised.value, TimeoutError)
        assert client.status(expiring.id).error_type == "DeadlineExceededError"
        assert patient.result(timeout_s=30).shape == (1, client.model_dim())
    broker.close()


def test_a_lone_request_is_sent_at_once_and_a_burst_leaves_as_one_task(
    redis_url: str, own_model_worker: WorkerProcess
) -> None:
    model = own_model_worker.settings.model_id
    with EmbeddingClient(redis_url, model=model, batch_wait_ms=1000) as client:
        started = time.monotonic()
        client.embed_queries(["alone"]).result(timeout_s=30)
        assert time.monotonic() - started < 0.9  # not held for the 1 s window
        before = len(_batches_received(own_model_worker))
        gate = threading.Barrier(8)

        def send(number: int) -> np.ndarray:
            gate.wait()
            return client.embed_queries([f"burst {number}"]).result(timeout_s=30)

        with ThreadPoolExecutor(8) as pool:
            shapes = {vectors.shape for vectors in pool.map(send, range(8))}
        assert shapes == {(1, client.model_dim())}
        assert len(_batches_received(own_model_worker)) - before == 1
