"""One bad record is one bad record: a backfill through real workers and Milvus Lite writes the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from producer.backfill import BackfillOptions, run_backfill
from producer.client import EmbeddingClient
from tests.support.workers import WorkerProcess, worker_sink

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]

GOOD = 300


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_bad_records_are_rejected_alone_and_the_rest_written(worker: WorkerProcess, tmp_path: Path) -> None:
    # Each of these failed its whole chunk in Milvus, on every rerun, or stopped the run.
    bad = [
        {"id": "long-text", "text": "é" * 40_000},  # 80,000 bytes: under 100,000 characters
        {"id": "i" * 600, "text": "an id over 512 bytes"},
        {"id": "nan", "text": "not a number", "score": float("nan")},
        {"id": "big", "text": "a 30-digit integer", "n": 10**29},
        {"id": "deep", "text": "deep metadata", "meta": _nested(600)},
    ]
    lines = [json.dumps({"id": f"doc-{n}", "text": f"paragraph {n}", "n": n}) for n in range(GOOD)]
    for position, record in zip((5, 120, 121, 250, 299), bad, strict=True):
        lines.insert(position, json.dumps(record))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    bad_line_numbers = sorted(number for number, line in enumerate(lines, start=1) if '"doc-' not in line)

    with EmbeddingClient.from_settings(worker.settings) as client:
        options = BackfillOptions(corpus, "bad_records", chunk_size=100, state_dir=tmp_path / "state")
        summary = run_backfill(client, options)
    assert (summary.written, summary.failed) == (GOOD, len(bad))
    assert [int(error.split(" line ")[1].split(":")[0]) for error in summary.errors] == bad_line_numbers
    sink = worker_sink(worker, "bad_records")
    try:
        assert sink.count() == GOOD
    finally:
        sink.close()
