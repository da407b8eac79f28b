"""Faults during a backfill into Milvus Lite: pool processes, the Lite server, the broker, Milvus down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from producer import EmbeddingClient
from producer.backfill import BackfillOptions, BackfillProgress, backfill_status, run_backfill
from producer.errors import (
    BrokerUnavailableError,
)
from tests.support.corpora import write_jsonl_corpus
from tests.support.models import build_model
from tests.support.redis import SecretBroker
from tests.support.waiting import WAIT_S, wait_until
from tests.support.workers import WorkerProcess, start_worker, stop_worker
from worker.milvus.lite_server import LiteServerFiles, stop_lite_server
from worker.milvus.sink import open_sink
from worker.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COMMAND_TIMEOUT_S = 60.0


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


def _backfill_rig(broker_url: str, folder: Path, queues: list[str] | None = None) -> BackfillRig:
    model = str(build_model(folder / "model", dim=TINY_DIM))
    worker = start_worker(
        broker_url, folder / "worker.log", model, milvus_uri=str(folder / "faults.db"), queues=queues
    )
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


@pytest.fixture(scope="module")
def bulk_only_rig(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackfillRig]:
    """A worker of the bulk queue only: it reserves a second chunk per pool process (prefetch 2)."""
    rig = _backfill_rig(redis_url, tmp_path_factory.mktemp("backfill-faults-bulk"), ["bulk"])
    try:
        yield rig
    finally:
        stop_worker(rig.worker)
        stop_lite_server(rig.lite_db)


@pytest.mark.parametrize("rig_name", ["backfill_rig", "bulk_only_rig"])
def test_a_pool_process_killed_mid_backfill_loses_and_duplicates_nothing(
    rig_name: str, request: pytest.FixtureRequest
) -> None:
    backfill_rig: BackfillRig = request.getfixturevalue(rig_name)
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
        wait_until(self._answers, "the Lite server to answer", timeout_s=60)

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


DOWN_CHUNK = 1_000  # what is checked is the last chunk failing alone, not the volume
DOWN_DOCS = 4 * DOWN_CHUNK


def test_a_milvus_that_stays_down_fails_the_backfill_by_task_and_job_id_without_false_counts(
    redis_url: str, tmp_path: Path
) -> None:
    """Four chunks, one in flight: the fault hits the last chunk, which fails after its retries."""
    lite = LiteServer(tmp_path / "lite-data")
    lite.start()
    model = str(build_model(tmp_path / "model", dim=TINY_DIM))  # a queue of its own, as in BackfillRig
    # Five retries at the default first delay (1 s, doubling) would wait 15-31 s for the last one.
    worker = start_worker(
        redis_url,
        tmp_path / "worker.log",
        model,
        milvus_uri=lite.uri,
        extra_env={"EMBEDQ_RETRY_BACKOFF_S": "0.1"},
    )
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", DOWN_DOCS)
    options = BackfillOptions(
        corpus, "milvus_down", chunk_size=DOWN_CHUNK, max_in_flight=1, state_dir=tmp_path / "state"
    )
    try:
        with EmbeddingClient.from_settings(worker.settings) as client:

            def kill_milvus(progress: BackfillProgress) -> None:
                if progress.docs_done >= DOWN_DOCS - DOWN_CHUNK:
                    lite.kill()

            summary = run_backfill(client, options, on_progress=kill_milvus)
            status = backfill_status(client, summary.job_id)
            failed_tasks = _failed_task_ids(client, mentioning="milvus_down")
            task_statuses = [client.status(task_id) for task_id in failed_tasks]
    finally:
        stop_worker(worker)
        lite.kill()
    assert (summary.written, summary.failed) == (DOWN_DOCS - DOWN_CHUNK, DOWN_CHUNK)
    assert status is not None and (status.state, status.docs_done, status.docs_failed) == (
        "failed",
        DOWN_DOCS - DOWN_CHUNK,
        DOWN_CHUNK,
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
            filter=f"id in {json.dumps([f'doc-{i}' for i in range(DOWN_DOCS - DOWN_CHUNK)])}",
            output_fields=["id"],
            consistency_level="Strong",
            limit=DOWN_DOCS,
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
