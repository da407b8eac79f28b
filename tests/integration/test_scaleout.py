"""Scale-out with real workers: pool sizes seen by producers as workers come and go; sharded backfills."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, backfill_status, job_id_for, run_backfill
from producer.backfill.fleet import pool_reader
from producer.backfill.model import Shard
from producer.client import EmbeddingClient
from producer.protocol.names import PRESENCE_TTL_S
from tests.support.corpora import write_jsonl_corpus
from tests.support.workers import WorkerProcess, start_worker, stop_worker, worker_sink
from worker.queue.fleet import usable_cpus

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]


def test_producers_count_the_pool_processes_of_workers_as_they_come_and_go(
    worker: WorkerProcess, client: EmbeddingClient, redis_url: str, tmp_path: Path
) -> None:
    pools = pool_reader(client)

    def read() -> int:
        return sum(pool.runnable for pool in pools())

    before = read()
    assert before >= 2  # the session's worker runs 2 pool processes
    extra = start_worker(
        redis_url, tmp_path / "extra.log", extra_env={"EMBEDQ_CONCURRENCY": "3"}, queues=["bulk"]
    )
    added = min(3, usable_cpus())  # on a machine of fewer CPUs, only that many run at once
    try:
        deadline = time.monotonic() + 10.0
        while read() != before + added and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read() == before + added
    finally:
        stop_worker(extra)
    deadline = time.monotonic() + PRESENCE_TTL_S + 3.0
    while read() != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert read() == before  # a stopped worker's pool key expires with its presence key


def test_shards_of_one_file_write_it_all_once_and_status_sums_them(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    docs = 1_000
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", docs)
    shards = [
        BackfillOptions(corpus, "backfill_shards", chunk_size=64, state_dir=tmp_path / "s", shard=Shard(k, 3))
        for k in (1, 2, 3)
    ]
    whole = job_id_for(BackfillOptions(corpus, "backfill_shards", chunk_size=64), client.model)
    first = run_backfill(client, shards[0])
    assert first.written == Shard(1, 3).records(docs, 64) and first.failed == 0
    partial = backfill_status(client, whole)
    assert partial is not None and partial.state.startswith("partial (1 of 3")
    written = first.written + sum(run_backfill(client, options).written for options in shards[1:])
    assert written == docs
    again = run_backfill(client, shards[1])  # each shard resumes on its own: nothing left to do
    assert (again.written, again.skipped) == (0, Shard(2, 3).records(docs, 64))
    status = backfill_status(client, whole)
    assert status is not None
    assert (status.state, status.docs_done, status.docs_total) == ("done", docs, docs)
    sink = worker_sink(worker, "backfill_shards")
    assert sink.count() == docs
