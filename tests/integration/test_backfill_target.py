"""A backfill's saved progress is tied to the collection it was written to (real worker, Milvus Lite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from producer.backfill import BackfillOptions, run_backfill
from producer.backfill.target import target_file, target_key
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from tests.support.corpora import write_jsonl_corpus
from tests.support.workers import WorkerProcess, worker_sink

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]

DOCS = 300


def _options(tmp_path: Path, collection: str) -> BackfillOptions:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", DOCS)
    return BackfillOptions(corpus, collection, chunk_size=100, max_in_flight=2, state_dir=tmp_path / "state")


def test_a_collection_dropped_or_made_again_is_backfilled_again_not_skipped(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    options = _options(tmp_path, "target_dropped")
    assert run_backfill(client, options).written == DOCS
    sink = worker_sink(worker, "target_dropped")

    sink.client.drop_collection("target_dropped")
    notices: list[str] = []
    again = run_backfill(client, options, on_notice=notices.append)
    assert (again.written, again.skipped, again.complete) == (DOCS, 0, True), again.errors
    assert sink.count() == DOCS
    assert len(notices) == 1 and "does not exist" in notices[0] and "starting over" in notices[0]

    # Dropped and made again (one unrelated row) before the next run: not the same collection.
    sink.client.drop_collection("target_dropped")
    worker_sink(worker, "target_dropped").upsert(["x"], ["another"], [{}], np.ones((1, 256), np.float32))
    notices.clear()
    third = run_backfill(client, options, on_notice=notices.append)
    assert (third.written, third.skipped) == (DOCS, 0)
    assert len(notices) == 1 and "dropped and made again" in notices[0]

    notices.clear()
    fourth = run_backfill(client, options, on_notice=notices.append)  # nothing changed: skip it all
    assert (fourth.written, fourth.skipped, notices) == (0, DOCS, [])


def test_progress_saved_without_a_target_is_void_once_the_collection_is_gone(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    options = _options(tmp_path, "target_earlier")
    summary = run_backfill(client, options)
    # What an earlier embedq saved: the chunks, and nothing about where they were written.
    target_file(options.state_dir, summary.job_id).unlink()
    with broker_client(client.app) as redis:
        redis.delete(target_key(summary.job_id))
    kept = run_backfill(client, options)  # the collection is there: the saved chunks are trusted
    assert (kept.written, kept.skipped) == (0, DOCS)

    target_file(options.state_dir, summary.job_id).unlink()
    worker_sink(worker, "target_earlier").client.drop_collection("target_earlier")
    notices: list[str] = []
    again = run_backfill(client, options, on_notice=notices.append)
    assert (again.written, again.skipped) == (DOCS, 0) and len(notices) == 1
