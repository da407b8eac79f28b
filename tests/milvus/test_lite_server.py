"""The shared milvus-lite server: one per Lite database, started once, writes serialised across processes."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import pytest

from producer.errors import SinkUnavailableError
from worker.milvus.lite_server import (
    LiteServerFiles,
    LiteWriteLock,
    ensure_lite_server,
    is_lite_path,
    stop_lite_server,
)
from worker.milvus.sink import open_sink

pytestmark = pytest.mark.integration

DIM = 8
WRITERS, BATCHES, BATCH_ROWS, SHARED_ROWS = 3, 8, 40, 5
TRY_WRITE_LOCK = """
import sys
from producer.errors import SinkUnavailableError
from worker.milvus.lite_server import LiteWriteLock
try:
    with LiteWriteLock(sys.argv[1], timeout_s=0.3):
        print("acquired")
except SinkUnavailableError:
    print("busy")
"""
HOLD_LITE_DATABASE = """
import sys
import pymilvus
client = pymilvus.MilvusClient(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def lite_db(tmp_path: Path) -> Iterator[Path]:
    """A Lite database path whose server, if one gets started, is stopped after the test."""
    db = tmp_path / "shared.db"
    yield db
    stop_lite_server(db)


def recorded_pid(db: Path) -> int:
    pid: int = json.loads(LiteServerFiles.for_path(db).state.read_text())["pid"]
    return pid


def pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/cmdline").read_bytes() != b""


def test_a_second_call_attaches_to_the_running_server_and_stop_ends_it(lite_db: Path) -> None:
    uri = ensure_lite_server(lite_db)
    pid = recorded_pid(lite_db)
    assert uri.startswith("http://127.0.0.1:")

    assert ensure_lite_server(lite_db) == uri
    assert recorded_pid(lite_db) == pid

    assert stop_lite_server(lite_db) is True
    assert not pid_alive(pid)
    assert not LiteServerFiles.for_path(lite_db).state.exists()
    assert stop_lite_server(lite_db) is False


def test_a_stale_record_is_replaced_by_a_fresh_server(lite_db: Path) -> None:
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    files = LiteServerFiles.for_path(lite_db)
    files.state.write_text(json.dumps({"pid": dead_pid.pid, "port": 9, "data_dir": str(files.data_dir)}))

    uri = ensure_lite_server(lite_db)

    assert recorded_pid(lite_db) != dead_pid.pid
    assert pid_alive(recorded_pid(lite_db))
    assert uri != "http://127.0.0.1:9"


def test_a_database_held_by_another_process_fails_with_a_clear_error(lite_db: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LITE_DATABASE, str(lite_db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(SinkUnavailableError, match="open in another process"):
            ensure_lite_server(lite_db)
    finally:
        holder.kill()
        holder.wait()


def test_the_write_lock_excludes_other_processes(lite_db: Path) -> None:
    def other_process_tries() -> str:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        done = subprocess.run(
            [sys.executable, "-c", TRY_WRITE_LOCK, str(lite_db)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return done.stdout.strip()

    with LiteWriteLock(lite_db):
        assert other_process_tries() == "busy"
    assert other_process_tries() == "acquired"


def test_sink_writes_on_a_lite_path_wait_for_the_write_lock_and_reads_do_not(lite_db: Path) -> None:
    sink = open_sink(str(lite_db), None, "docs", "model-a", DIM)
    sink.ensure_collection()
    written: list[int] = []
    writer = threading.Thread(
        target=lambda: written.append(sink.upsert(["a"], ["a"], [{}], np.ones((1, DIM), np.float32)))
    )
    with LiteWriteLock(lite_db):
        writer.start()
        writer.join(timeout=0.5)
        assert writer.is_alive()
        assert sink.count() == 0
    writer.join(timeout=30)
    assert written == [1]
    assert sink.count() == 1
    sink.close()


def write_through_shared_server(db: str, writer: int, start: Event, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Run in a spawned process: open the sink on the Lite path at the same moment as the others, write."""
    start.wait()
    sink = open_sink(db, None, "docs", "model-a", DIM)
    rng = np.random.default_rng(writer)
    written = 0
    for batch in range(BATCHES):
        ids = [f"w{writer}-{batch}-{row}" for row in range(BATCH_ROWS)] + [
            f"shared-{i}" for i in range(SHARED_ROWS)
        ]
        vectors = rng.normal(size=(len(ids), DIM)).astype(np.float32)
        written += sink.upsert(ids, ids, [{"writer": writer}] * len(ids), vectors)
    sink.close()
    results.put((ensure_lite_server(db), written))


def test_concurrent_writer_processes_share_one_server_and_lose_no_write(lite_db: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    writers = [
        context.Process(target=write_through_shared_server, args=(str(lite_db), writer, start, results))
        for writer in range(WRITERS)
    ]
    for process in writers:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in writers]
    for process in writers:
        process.join(timeout=30)
        assert process.exitcode == 0

    assert len({uri for uri, _ in outcomes}) == 1
    assert [written for _, written in outcomes] == [BATCHES * (BATCH_ROWS + SHARED_ROWS)] * WRITERS
    sink = open_sink(str(lite_db), None, "docs", "model-a", DIM)
    assert sink.count() == WRITERS * BATCHES * BATCH_ROWS + SHARED_ROWS
    sink.close()


def test_writes_survive_a_restart_and_a_stopped_server_is_transient(lite_db: Path) -> None:
    sink = open_sink(str(lite_db), None, "docs", "model-a", DIM)
    vectors = np.eye(DIM, dtype=np.float32)
    ids = [f"doc-{i}" for i in range(DIM)]
    assert sink.upsert(ids, ids, [{}] * DIM, vectors) == DIM

    stop_lite_server(lite_db)
    with pytest.raises(SinkUnavailableError, match="retried"):
        sink.count()
    sink.close()

    reopened = open_sink(str(lite_db), None, "docs", "model-a", DIM)
    assert reopened.count() == DIM
    assert reopened.search(vectors[3], top_k=1)[0]["id"] == "doc-3"
    reopened.close()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./embedq.db", True),
        ("/var/lib/embedq/vectors.db", True),
        ("embedq.db/", True),
        ("http://milvus:19530", False),
        ("https://in01.example.cloud:443", False),
        ("./embedq", False),
    ],
)
def test_is_lite_path(uri: str, expected: bool) -> None:
    assert is_lite_path(uri) is expected


def test_the_write_lock_counts_the_writes_made_under_it_across_processes(lite_db: Path) -> None:
    lock = LiteWriteLock(lite_db)
    assert lock.writes() == 0
    with lock:
        pass
    with LiteWriteLock(lite_db):  # another holder of the same lock file (another process in use)
        pass
    with lock.uncounted():  # the sync mark's own write
        pass
    assert lock.writes() == LiteWriteLock(lite_db).writes() == 2
