"""Backfill end to end: real workers, real Redis, Milvus Lite through the shared Lite server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from producer.backfill import (
    BackfillOptions,
    BackfillProgress,
    backfill_status,
    job_id_for,
    local_backfill_status,
    run_backfill,
)
from producer.backfill.ids import document_id
from producer.celery_config import broker_client
from producer.client import EmbeddingClient
from tests.support.corpora import write_jsonl_corpus
from tests.support.workers import WorkerProcess, worker_sink
from worker.encoding.encoder import StaticEncoder

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]

DOCS = 3_000


def test_backfill_writes_every_document_and_a_rerun_skips_them(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", DOCS)
    options = BackfillOptions(
        corpus, "backfill_full", chunk_size=200, max_in_flight=4, state_dir=tmp_path / "state"
    )
    seen: list[BackfillProgress] = []
    summary = run_backfill(client, options, on_progress=seen.append)
    assert (summary.written, summary.failed, summary.skipped) == (DOCS, 0, 0)
    assert seen[-1].state == "done" and seen[-1].docs_total == DOCS
    sink = worker_sink(worker, "backfill_full")
    assert sink.count() == DOCS
    # The stored vector is the encoder's vector of the text.
    hit = sink.search(
        StaticEncoder.from_pretrained().encode(["paragraph 17 about task queues and vectors"])[0], 1
    )
    assert hit[0]["id"] == "doc-17" and hit[0]["metadata"] == {"n": 17}
    again = run_backfill(client, options)
    assert (again.written, again.skipped) == (0, DOCS)
    assert sink.count() == DOCS
    status = backfill_status(client, summary.job_id)
    assert status is not None and status.state == "done" and status.docs_done == DOCS
    # Without its Redis copy (expired, or Redis restarted empty), the state comes from the local file.
    with broker_client(client.app) as redis:
        assert redis.delete(f"embedq:backfill:{summary.job_id}") == 1
    assert backfill_status(client, summary.job_id) is None  # another directory knows nothing of it
    assert backfill_status(client, summary.job_id, options.state_dir) == status
    local = local_backfill_status(summary.job_id, options.state_dir)
    assert local is not None and local[0] == status and abs(local[1] - time.time()) < 60


def test_interrupted_backfill_resumes_without_redoing_confirmed_chunks(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", DOCS)
    options = BackfillOptions(
        corpus, "backfill_resume", chunk_size=100, max_in_flight=2, state_dir=tmp_path / "state"
    )

    def interrupt(progress: BackfillProgress) -> None:
        if progress.docs_done >= 1_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_backfill(client, options, on_progress=interrupt)
    first = backfill_status(client, job_id_for(options, client.model))
    assert first is not None and first.state == "interrupted"
    resumed = run_backfill(client, options)
    assert resumed.skipped >= 1_000
    assert resumed.written + resumed.skipped >= DOCS
    assert resumed.written < DOCS
    assert worker_sink(worker, "backfill_resume").count() == DOCS


def test_bad_records_are_counted_as_failed_and_the_rest_lands(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = write_jsonl_corpus(tmp_path / "corpus.jsonl", 500, bad_every=10)
    summary = run_backfill(
        client, BackfillOptions(corpus, "backfill_bad", chunk_size=64, state_dir=tmp_path / "s")
    )
    assert (summary.written, summary.failed) == (450, 50)
    assert any("not valid JSON" in error for error in summary.errors)
    assert worker_sink(worker, "backfill_bad").count() == 450


def test_documents_without_ids_get_text_hashes_and_never_duplicate(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = tmp_path / "lines.txt"
    corpus.write_text("".join(f"line number {i}\n" for i in range(300)))
    first = run_backfill(client, BackfillOptions(corpus, "backfill_text", state_dir=tmp_path / "a"))
    # Another chunk size is another job: every document is sent again, and upserted by id.
    second = run_backfill(
        client, BackfillOptions(corpus, "backfill_text", chunk_size=50, state_dir=tmp_path / "b")
    )
    assert first.written == 300
    assert (second.written, second.skipped) == (300, 0)
    sink = worker_sink(worker, "backfill_text")
    assert sink.count() == 300
    vector = np.asarray(StaticEncoder.from_pretrained().encode(["line number 5"])[0])
    assert sink.search(vector, 1)[0]["id"] == document_id("line number 5")


def test_a_record_with_a_metadata_object_keeps_its_other_fields(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    corpus = tmp_path / "records.jsonl"
    record = {"id": "r1", "text": "a record", "lang": "en", "year": 2023, "metadata": {"year": 2024}}
    corpus.write_text(json.dumps(record) + "\n")
    assert (
        run_backfill(client, BackfillOptions(corpus, "backfill_merged", state_dir=tmp_path / "s")).written
        == 1
    )
    stored = worker_sink(worker, "backfill_merged").client.query(
        "backfill_merged", ids=["r1"], output_fields=["metadata"]
    )
    assert {k: v for k, v in stored[0]["metadata"].items() if not k.startswith("_")} == {
        "lang": "en",
        "year": 2024,
    }
