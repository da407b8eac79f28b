"""Backfill control logic on a real Redis with scripted task outcomes: when to stop sending or waiting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

import producer.backfill.run as backfill
from producer.backfill import BackfillOptions, run_backfill
from producer.celery_config import build_celery_app
from producer.client import EmbeddingClient
from producer.errors import NoWorkerError, SinkUnavailableError
from producer.job import TaskOutcome
from producer.protocol.documents import Document
from producer.settings import Settings

pytestmark = pytest.mark.integration


def _corpus(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(count)))
    return path


def _client(
    app: Celery, monkeypatch: pytest.MonkeyPatch, outcome: TaskOutcome
) -> tuple[EmbeddingClient, list[int]]:
    # A model of its own: no worker of this session's other tests serves its queue.
    client = EmbeddingClient(app=app, model="test/backfill-logic", worker_wait_s=0.2, max_queue_depth=None)
    sent: list[int] = []

    def submit(
        collection: str, documents: list[Document], *, skip_unchanged: bool = False, split: object = None
    ) -> str:
        sent.append(len(documents))
        return f"task-{len(sent)}"

    monkeypatch.setattr(client, "submit_upsert", submit)
    monkeypatch.setattr(client.reader, "outcomes", lambda task_ids: [outcome for _ in task_ids])
    return client, sent


@pytest.fixture
def app(redis_url: str) -> Iterator[Celery]:
    app = build_celery_app(Settings(broker_url=redis_url), "embedq-test")
    yield app
    app.close()


def test_a_store_that_stays_down_stops_the_sending_after_three_chunks(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client, sent = _client(app, monkeypatch, TaskOutcome("failed", error=SinkUnavailableError("down")))
    options = BackfillOptions(
        _corpus(tmp_path / "c.jsonl", 100),
        "docs",
        chunk_size=10,
        max_in_flight=1,
        state_dir=tmp_path / "state",
    )
    summary = run_backfill(client, options)
    assert sent == [10, 10, 10]
    assert (summary.written, summary.failed) == (0, 30)
    assert any("stopped sending after 3 chunks in a row" in error for error in summary.errors)


def test_a_backfill_whose_workers_vanished_ends_with_no_worker_error(
    app: Celery, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client, sent = _client(app, monkeypatch, TaskOutcome("pending"))
    monkeypatch.setattr(backfill, "_WORKER_CHECK_AFTER_S", 0.1)
    options = BackfillOptions(
        _corpus(tmp_path / "c.jsonl", 20), "docs", chunk_size=10, state_dir=tmp_path / "s"
    )
    with pytest.raises(NoWorkerError, match="no worker consumes queue"):
        run_backfill(client, options)
    assert sent == [10, 10]
