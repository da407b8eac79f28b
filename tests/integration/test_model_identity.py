"""One model name, two sets of files: the fingerprint keeps their vectors apart (real workers, Milvus Lite).

Both folders are reached by the same string, ``./m-identity``, from two working directories: a
modified copy, or another host's revision of the same model.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from producer.client import EmbeddingClient
from producer.errors import ModelMismatchError
from producer.protocol.documents import Document
from producer.protocol.names import PRESENCE_TTL_S
from producer.settings import load_settings
from tests.support.models import build_model
from tests.support.waiting import wait_until
from tests.support.workers import EMBEDQ, start_worker, stop_worker
from worker.encoding.loader import load_model_files
from worker.milvus.lite_server import stop_lite_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "./m-identity"
START_TIMEOUT_S = 60.0


def _upsert(client: EmbeddingClient, doc_id: str) -> str:
    task_id = client.submit_upsert("docs", [Document(doc_id, f"the text of {doc_id}", {})])
    wait_until(lambda: client.reader.outcomes([task_id])[0].state in ("done", "failed"), f"upsert {doc_id}")
    return task_id


def test_other_files_under_one_model_name_neither_join_the_queue_nor_write_into_its_collection(
    redis_url: str, tmp_path: Path
) -> None:
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    build_model(host_a / MODEL, seed=0)
    build_model(host_b / MODEL, seed=1)  # the same layout and name, other weights
    files_a, files_b = (load_model_files(host / MODEL).fingerprint for host in (host_a, host_b))
    db = str(tmp_path / "embedq.db")
    env = {**os.environ, "EMBEDQ_BROKER_URL": redis_url, "EMBEDQ_MODEL": MODEL, "EMBEDQ_MILVUS_URI": db}
    settings = load_settings(env)
    worker = start_worker(redis_url, tmp_path / "a.log", MODEL, cwd=host_a, milvus_uri=db)
    try:
        with EmbeddingClient.from_settings(settings) as client:
            written = client.reader.outcomes([_upsert(client, "doc-1")])[0]
            assert written.state == "done", written.error

            # A second worker under the same name with other files, while the first serves the queue.
            second = subprocess.run(
                [str(EMBEDQ), "worker", "--concurrency", "1"],
                cwd=host_b,
                env=env,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
            )
            assert second.returncode == 2, second.stderr[-3000:]
            refusal = second.stderr.strip().splitlines()[-1]
            assert files_a[:12] in refusal and files_b[:12] in refusal and files_a not in refusal
            assert worker.process.poll() is None  # the worker already serving is untouched

            # Alone on the queue, it is still refused by the collection the first one filled.
            stop_worker(worker)
            worker = start_worker(redis_url, tmp_path / "b.log", MODEL, cwd=host_b, milvus_uri=db)
            refused = client.reader.outcomes([_upsert(client, "doc-2")])[0]
    finally:
        stop_worker(worker)
        stop_lite_server(db)

    assert isinstance(refused.error, ModelMismatchError)
    assert files_a[:12] in str(refused.error) and files_b[:12] in str(refused.error)


def test_of_two_workers_started_at_once_with_other_files_one_stops_with_exit_2(
    redis_url: str, tmp_path: Path
) -> None:
    """Both pass the start check (neither advertises yet); their first presence refreshes settle it."""
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    for seed, host in enumerate(hosts):
        build_model(host / MODEL, seed=seed)
    env = {**os.environ, "EMBEDQ_BROKER_URL": redis_url, "EMBEDQ_MODEL": MODEL, "EMBEDQ_CONCURRENCY": "1"}
    env["EMBEDQ_MILVUS_URI"] = str(tmp_path / "embedq.db")
    logs = [(tmp_path / f"{host.name}.log").open("wb") for host in hosts]
    workers = [
        subprocess.Popen([str(EMBEDQ), "worker"], cwd=host, env=env, stdout=log, stderr=subprocess.STDOUT)
        for host, log in zip(hosts, logs, strict=True)
    ]
    try:
        wait_until(lambda: any(w.poll() is not None for w in workers), "one worker to stop", START_TIMEOUT_S)
        time.sleep(PRESENCE_TTL_S / 3 + 1)  # another refresh: the other one stays
        codes = sorted(w.poll() is None or w.returncode for w in workers)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(30)
        for log in logs:
            log.close()
    assert codes == [True, 2]
    stopped = next(host for host, w in zip(hosts, workers, strict=True) if w.returncode == 2)
    assert "this worker stops (exit code 2)" in (tmp_path / f"{stopped.name}.log").read_text()
