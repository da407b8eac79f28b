"""Real embedq worker processes (prefork, concurrency 2) on the session's Redis database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from producer.client import EmbeddingClient
from producer.protocol.names import presence_key
from producer.settings import Settings, load_settings
from worker.local.cluster import stop_process_group
from worker.milvus.lite_server import stop_lite_server
from worker.milvus.sink import MilvusSink, open_sink

REPO_ROOT = Path(__file__).resolve().parents[2]
EMBEDQ = Path(sys.executable).with_name("embedq")
"""The `embedq` console script of the running interpreter's environment."""
WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 15.0
# Big enough for one task to run for about a second, so a test can kill it mid-task.
TEST_MAX_TEXTS_PER_REQUEST = 10_000
_RUN_WORKER = (
    "import json, os; from producer.settings import load_settings; from worker.queue.app import run_worker; "
    "raise SystemExit(run_worker(load_settings(), queues=json.loads(os.environ['EMBEDQ_TEST_QUEUES']), "
    "loglevel='INFO'))"
)


@dataclass
class WorkerProcess:
    """A running ``run_worker`` subprocess and its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path
    settings: Settings

    def log(self) -> str:
        """Return the worker's log so far."""
        return self.log_path.read_text(errors="replace")

    def received_count(self, task_id: str) -> int:
        """How many times the worker received (was delivered) the task with this id."""
        return len(re.findall(rf"\[{re.escape(task_id)}\] received", self.log()))

    def pool_pids(self) -> list[int]:
        """Pids of the worker's pool processes."""
        return [child.pid for child in psutil.Process(self.process.pid).children()]


def broker_redis(url: str, sentinel_master: str | None = None) -> redis.Redis:
    """Return a redis-py client of the broker at ``url`` (through the sentinels for a sentinel:// URL)."""
    if url.startswith("sentinel://"):
        from tests.support.sentinel import primary_client

        return primary_client(url, sentinel_master or "")
    return redis.Redis.from_url(url.replace("redis+socket://", "unix://", 1))  # redis-py's spelling


def start_worker(
    redis_url: str,
    log_path: Path,
    model: str | None = None,
    *,
    milvus_uri: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    queues: Sequence[str] | None = None,
    cwd: Path = REPO_ROOT,
) -> WorkerProcess:
    """Start a worker on ``redis_url`` and wait until it advertises its queues.

    Its Milvus target is ``milvus_uri``, by default a Lite database next to the log file;
    ``extra_env`` adds or overrides EMBEDQ_* variables; ``queues`` is passed to ``run_worker``
    (default: the model's queue and its bulk queue); ``cwd`` is where a relative model path is read.
    """
    env = {
        **os.environ,
        "EMBEDQ_BROKER_URL": redis_url,
        "EMBEDQ_MILVUS_URI": milvus_uri or str(log_path.parent / "embedq.db"),
        "EMBEDQ_CONCURRENCY": "2",
        "EMBEDQ_MAX_TEXTS_PER_REQUEST": str(TEST_MAX_TEXTS_PER_REQUEST),
        "PYTHONUNBUFFERED": "1",
        "EMBEDQ_TEST_QUEUES": json.dumps(list(queues) if queues else None),
    }
    env.pop("EMBEDQ_RESULT_BACKEND", None)
    if model is None:
        env.pop("EMBEDQ_MODEL", None)
    else:
        env["EMBEDQ_MODEL"] = model
    env.update(extra_env or {})
    settings = load_settings(env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _RUN_WORKER],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, stopped as one by stop_worker
        )
    worker = WorkerProcess(process, log_path, settings)
    client = broker_redis(redis_url, settings.sentinel_master)
    keys = [presence_key(f"embedq.{settings.model_id}"), presence_key(f"embedq.{settings.model_id}.bulk")]
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    try:
        while not client.exists(*keys):
            if process.poll() is not None or time.monotonic() > deadline:
                stop_worker(worker)
                pytest.fail(f"the worker did not start; its log:\n{worker.log()[-4000:]}")
            time.sleep(0.05)
    finally:
        client.close()
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    """Stop the worker as the local run stops its own: SIGTERM to its process group, SIGKILL after a grace.

    Signalling the pool processes too ends them at once instead of after the pool's polling
    interval (seconds per stop with SIGTERM to the main process alone). What it started in
    sessions of their own (a Lite server and its guardian) is killed after.
    """
    if worker.process.poll() is not None:
        return
    try:
        children = psutil.Process(worker.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    stop_process_group(worker.process, WORKER_STOP_TIMEOUT_S)
    for child in children:
        if child.is_running():
            child.kill()


@pytest.fixture(scope="session")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker of the bundled model (prefork, concurrency 2) shared by the session's tests."""
    process = start_worker(redis_url, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        yield process
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def lite_server_stopped_after_module(worker: WorkerProcess) -> Iterator[None]:
    """Stop the session worker's shared Lite server once the module's tests are done with it."""
    yield
    stop_lite_server(worker.settings.milvus_uri)


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[EmbeddingClient]:
    """A client of the session worker, shared by a module's tests (a module may define its own)."""
    with EmbeddingClient.from_settings(worker.settings) as embedding_client:
        yield embedding_client


def worker_sink(worker: WorkerProcess, collection: str, dim: int = 256) -> MilvusSink:
    """A sink on ``collection`` of the worker's Milvus, for its model (the bundled one's dim by default)."""
    return open_sink(worker.settings.milvus_uri, None, collection, worker.settings.model_id, dim)
