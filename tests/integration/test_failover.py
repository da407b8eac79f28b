"""Broker failover with real processes: a primary, a replica and three sentinels; the primary killed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.backfill import run_lock
from producer.settings import load_settings
from tests.support.corpora import write_jsonl_corpus
from tests.support.failover import failover_round
from tests.support.sentinel import MASTER_NAME, SentinelSetup, sentinel_setup
from tests.support.workers import start_worker, stop_worker
from worker.milvus.lite_server import stop_lite_server
from worker.milvus.sink import open_sink

pytestmark = pytest.mark.integration

DOCS = 4_000


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[SentinelSetup]:
    with sentinel_setup(tmp_path / "sentinel") as started:
        yield started


def test_a_backfill_and_queries_survive_the_primary_being_killed(
    setup: SentinelSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run the failover stops cannot free its run lock; a shorter TTL keeps the test short.
    monkeypatch.setattr(run_lock, "LOCK_TTL_S", 5)
    env = {"EMBEDQ_BROKER_URL": setup.url, "EMBEDQ_SENTINEL_MASTER": MASTER_NAME}
    worker = start_worker(setup.url, tmp_path / "worker.log", extra_env=env)
    milvus_uri = worker.settings.milvus_uri
    try:
        settings = load_settings({**env, "EMBEDQ_MILVUS_URI": milvus_uri})
        corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", DOCS)
        result = failover_round(
            setup, settings, corpus, "failover", tmp_path / "state", kill_after_docs=DOCS // 4
        )
        assert worker.process.poll() is None, "the worker must reconnect, not exit"
        assert result.failover_s < 10.0
        assert result.written + result.skipped == DOCS, result
        assert result.queries.wrong == 0
        assert result.queries.right_after_failover >= 5, (result.queries, worker.log()[-3000:])
        sink = open_sink(milvus_uri, None, "failover", settings.model_id, 256)
        assert sink.count() == DOCS  # upserts by id: a chunk sent twice is never two rows
    finally:
        stop_worker(worker)
        stop_lite_server(milvus_uri)
