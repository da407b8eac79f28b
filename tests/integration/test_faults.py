"""Faults with real processes: credentials under errors, a broker restart, a queue deeper than its limit.

Each test drives the product as a user runs it (the `embedq worker` command, `run_worker`, an
EmbeddingClient over a real Redis-protocol server) and checks what the user would notice.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis

from producer import EmbeddingClient
from producer.errors import (
    ConfigError,
    EmbedqError,
    InvalidInputError,
    OverloadedError,
)
from producer.protocol.documents import Document
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from tests.support.models import build_model
from tests.support.redis import SecretBroker
from tests.support.waiting import WAIT_S, wait_until
from tests.support.workers import EMBEDQ, REPO_ROOT, WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder
from worker.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COMMAND_TIMEOUT_S = 60.0


# --- Credentials never appear in logs, results or error messages ------------------------------------


@dataclass
class Evidence:
    """Everything a user, an operator or another process could read back."""

    texts: list[str] = field(default_factory=list)

    def add_error(self, exc: BaseException) -> None:
        self.texts.append("".join(traceback.format_exception(exc)))

    def add_broker_contents(self, url: str) -> None:
        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter():
                kind = client.type(key)
                value: object
                if kind == b"string":
                    value = client.get(key)
                elif kind == b"hash":
                    value = client.hgetall(key)
                elif kind == b"list":
                    value = client.lrange(key, 0, -1)
                elif kind == b"zset":
                    value = client.zrange(key, 0, -1)
                else:
                    value = client.smembers(key)
                self.texts.append(f"{key!r}: {value!r}")


def _raised(call: Callable[[], object]) -> EmbedqError:
    try:
        call()
    except EmbedqError as exc:
        return exc
    pytest.fail("no embedq error was raised")


def test_credentials_never_appear_in_logs_results_or_errors(
    secret_broker: SecretBroker, tmp_path: Path
) -> None:
    wrong_password = f"wrongpw-{uuid.uuid4().hex}"
    uri_password = f"uripw-{uuid.uuid4().hex}"
    milvus_token = f"root:tokenpw-{uuid.uuid4().hex}"
    secrets = [secret_broker.password, wrong_password, uri_password, milvus_token.split(":")[1]]
    unreachable_milvus = f"http://embedq:{uri_password}@127.0.0.1:{free_port()}"
    evidence = Evidence()
    worker = start_worker(
        secret_broker.url,
        tmp_path / "worker.log",
        milvus_uri=unreachable_milvus,
        extra_env={"EMBEDQ_MILVUS_TOKEN": milvus_token},
    )
    try:
        with EmbeddingClient(secret_broker.url) as client:
            evidence.texts.append(repr(client))
            assert (
                client.embed_documents(["the broker takes the password"]).result(timeout_s=WAIT_S).shape[0]
                == 1
            )
            _provoke_task_errors(client, evidence)
            _provoke_broker_outage(client, secret_broker, worker, evidence)
            with EmbeddingClient(secret_broker.url.replace(secret_broker.password, wrong_password)) as wrong:
                evidence.texts.append(repr(wrong))
                error = _raised(lambda: wrong.embed_documents(["refused"]))
                # A wrong password is a configuration error (exit 2, said once), not "try again" (issue 15).
                assert isinstance(error, ConfigError)
                evidence.add_error(error)
        evidence.add_broker_contents(secret_broker.url)
    finally:
        stop_worker(worker)
    evidence.texts.append(_log_of_worker_with_wrong_password(secret_broker, wrong_password, tmp_path))
    evidence.texts.append(worker.log())
    everything = "\n".join(evidence.texts)
    assert "SinkUnavailableError" in everything and "InvalidInputError" in everything  # the errors happened
    for secret in secrets:
        assert secret not in everything


def _provoke_task_errors(client: EmbeddingClient, evidence: Evidence) -> None:
    """Bad input that skipped the producer's checks, and an upsert into a Milvus that is down."""
    request = EmbedRequest(client.model, "document", ("x" * 100_001,))
    sent = client.app.send_task(TASK_EMBED_DOCUMENTS, args=[request.encode()], queue=client.queue)
    error = _raised(lambda: client.job(sent.id).result(timeout_s=WAIT_S))
    assert isinstance(error, InvalidInputError)
    evidence.add_error(error)
    task_id = client.submit_upsert("docs", [Document("doc-1", "a document", {"n": 1})])
    wait_until(lambda: client.app.backend.get_task_meta(task_id)["status"] == "RETRY", "the upsert to retry")
    meta = client.app.backend.get_task_meta(task_id)
    evidence.texts.append(repr(meta))
    client.app.control.revoke(task_id)


def _provoke_broker_outage(
    client: EmbeddingClient, broker: SecretBroker, worker: WorkerProcess, evidence: Evidence
) -> None:
    """Stop the broker under the worker and the client, then bring it back: the worker reconnects."""
    broker.stop()
    error = _raised(lambda: client.embed_documents(["while the broker is down"]))
    evidence.add_error(error)
    wait_until(lambda: "Cannot connect to" in worker.log(), "the worker to notice the broker is gone")
    broker.start()
    wait_until(lambda: _serves(client), "the worker to reconnect after the broker came back", timeout_s=60)


def _serves(client: EmbeddingClient) -> bool:
    try:
        return bool(client.embed_documents(["back"]).result(timeout_s=5).shape[0] == 1)
    except EmbedqError:
        return False


def _log_of_worker_with_wrong_password(broker: SecretBroker, wrong_password: str, tmp_path: Path) -> str:
    """Run a worker given a wrong password until it refuses to start (exit 2, one line); return its log."""
    log_path = tmp_path / "wrong-password-worker.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "EMBEDQ_BROKER_URL": broker.url.replace(broker.password, wrong_password),
        "EMBEDQ_CONCURRENCY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(EMBEDQ), "worker"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: process.poll() is not None, "the worker to refuse the wrong password")
        assert process.returncode == 2
        assert "refused embedq" in log_path.read_text(errors="replace")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return log_path.read_text(errors="replace")


# --- The broker restarts under a busy worker ----------------------------------------------------------


def test_a_worker_holding_unacknowledged_tasks_survives_a_broker_restart(
    secret_broker: SecretBroker, tmp_path: Path
) -> None:
    """Without worker.queue.guard.GuardedQoS, Celery 5.7 ends the worker here ("Unrecoverable error")."""
    worker = start_worker(
        secret_broker.url, tmp_path / "worker.log", milvus_uri=f"http://127.0.0.1:{free_port()}"
    )
    try:
        with EmbeddingClient(secret_broker.url) as client:
            # An upsert into a Milvus that is down: the worker holds it, unacknowledged, until its retry.
            task_id = client.submit_upsert("docs", [Document("doc-1", "a document", {})])
            wait_until(lambda: client.app.backend.get_task_meta(task_id)["status"] == "RETRY", "a retry")
            pid = worker.process.pid
            secret_broker.stop()
            wait_until(lambda: "Connection to broker lost" in worker.log(), "the worker to lose the broker")
            secret_broker.start()
            wait_until(lambda: _serves(client), "the worker to serve again", timeout_s=60)
            assert worker.process.poll() is None and worker.process.pid == pid
            assert "Unrecoverable error" not in worker.log()
    finally:
        stop_worker(worker)


# --- Backpressure: producers get OverloadedError instead of growing Redis ----------------------------


@pytest.fixture(scope="module")
def paused_model_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker of a tiny model with a queue of its own, so pausing it touches no other test."""
    folder = tmp_path_factory.mktemp("backpressure")
    worker = start_worker(redis_url, folder / "worker.log", str(build_model(folder / "model")))
    try:
        yield worker
    finally:
        stop_worker(worker)


@contextmanager
def _paused(worker: WorkerProcess, broker: redis.Redis) -> Iterator[None]:
    """Stop the worker's main process (it takes no message off the queue) until the block ends.

    A control command (cancel_consumer) would be broadcast to every worker of the session's
    database, all named celery@<host>; SIGSTOP pauses this one worker only. A BRPOP it sent
    before stopping would still take one message: the pause begins once that BRPOP timed out.
    """
    worker.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not _blocked_on(broker, worker), "the stopped worker's BRPOP to time out")
        yield
    finally:
        worker.process.send_signal(signal.SIGCONT)


def _blocked_on(broker: redis.Redis, worker: WorkerProcess) -> bool:
    """Whether one of the worker's broker connections is blocked in a BRPOP on the server."""
    ports = {conn.laddr.port for conn in psutil.Process(worker.process.pid).net_connections("tcp")}
    for client in broker.client_list():
        host, _, port = str(client["addr"]).rpartition(":")
        if int(port) in ports and "b" in str(client["flags"]) and host in ("127.0.0.1", "::1"):
            return True
    return False


def test_a_queue_at_its_depth_limit_refuses_new_jobs_and_drains_when_served(
    paused_model_worker: WorkerProcess, redis_url: str
) -> None:
    limit, producers = 20, 8
    model = paused_model_worker.settings.model_id
    encoder = StaticEncoder.from_pretrained(model)
    queue_depth = redis.Redis.from_url(redis_url)
    # worker_wait_s=None: the queue depth alone decides (a paused worker's presence key may expire).
    # One task per request, so the queue depth counts requests (batched requests: test_batching.py).
    with EmbeddingClient(
        redis_url, model=model, max_queue_depth=limit, worker_wait_s=None, batch_wait_ms=None
    ) as client:
        with _paused(paused_model_worker, queue_depth):
            accepted = [(client.embed_documents([f"text {i}"]), f"text {i}") for i in range(limit - 1)]
            assert queue_depth.llen(client.queue) == limit - 1
            # Eight producers race for the last place: each checks the depth, then sends.
            refusals: list[Exception] = []
            lock = threading.Lock()

            def produce(number: int) -> None:
                for attempt in range(50):
                    text = f"producer {number} text {attempt}"
                    try:
                        job = client.embed_documents([text])
                    except OverloadedError as exc:
                        with lock:
                            refusals.append(exc)
                        return
                    with lock:
                        accepted.append((job, text))

            threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            depth = queue_depth.llen(client.queue)
            assert len(refusals) == producers
            assert all("retry later" in str(exc) for exc in refusals)
            # Bounded: at most one task past the limit per producer that passed the check in the race.
            assert limit <= depth <= limit - 1 + producers
            assert depth == len(accepted)
        for job, text in accepted:
            assert np.array_equal(job.result(timeout_s=WAIT_S), encoder.encode([text]))
        assert queue_depth.llen(client.queue) == 0
        client.embed_documents(["accepted again"]).result(timeout_s=WAIT_S)
    queue_depth.close()
