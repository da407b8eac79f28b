"""Daily sync end to end: real workers and Redis, Milvus Lite; edits, removals, additions, safe deletes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, run_backfill
from producer.backfill.idset import SeenIds, SyncManifest
from producer.client import EmbeddingClient
from tests.support.workers import WorkerProcess
from worker.cli.deletes import delete_missing
from worker.milvus.sink import open_sink

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]


@pytest.fixture(scope="module")
def client(worker: WorkerProcess) -> Iterator[EmbeddingClient]:
    with EmbeddingClient.from_settings(worker.settings) as embedding_client:
        yield embedding_client


def _write(path: Path, docs: dict[str, str], bad_line_at: int | None = None) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for number, (doc_id, text) in enumerate(docs.items()):
            if number == bad_line_at:
                out.write("{not json\n")
            out.write(json.dumps({"id": doc_id, "text": text, "n": number}) + "\n")
    return path


def _sync(
    client: EmbeddingClient, worker: WorkerProcess, path: Path, state: Path
) -> tuple[object, int | None]:
    options = BackfillOptions(path, "daily", chunk_size=100, state_dir=state, skip_unchanged=True)
    manifest = SyncManifest(state.parent / "daily.sqlite")
    with SeenIds(state.parent) as seen:
        summary = run_backfill(client, options, seen=seen)
        return summary, delete_missing(worker.settings, "daily", summary, seen, manifest)


def test_a_daily_sync_writes_changes_deletes_removals_and_never_deletes_after_a_bad_read(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    first = {f"doc-{i}": f"paragraph {i} about queues, vectors and search" for i in range(500)}
    summary, deleted = _sync(client, worker, _write(tmp_path / "day1.jsonl", first), tmp_path / "s1")
    assert (summary.written, summary.unchanged, deleted) == (500, 0, 0)  # type: ignore[attr-defined]

    second = {k: v for k, v in first.items() if k not in {"doc-7", "doc-8", "doc-9"}}
    second.update({"doc-10": "an edited paragraph", "doc-11": "another edited one"})
    second.update({f"new-{i}": f"an added paragraph {i}" for i in range(4)})
    # The same file with one unreadable line in the middle (and one more document): written, but
    # nothing deleted.
    bad = _write(tmp_path / "bad.jsonl", {**second, "temp-1": "only in the bad file"}, bad_line_at=250)
    summary, deleted = _sync(client, worker, bad, tmp_path / "s2")
    assert deleted is None and summary.failed == 1  # type: ignore[attr-defined]
    sink = open_sink(worker.settings.milvus_uri, None, "daily", worker.settings.model_id, 256)
    assert sink.count() == 500 + 4 + 1  # the removed documents are all still there

    # The next complete sync deletes the removed ones and the one the failed run wrote.
    summary, deleted = _sync(client, worker, _write(tmp_path / "day2.jsonl", second), tmp_path / "s3")
    assert (summary.written, summary.unchanged, deleted) == (0, 501, 3 + 1)  # type: ignore[attr-defined]
    assert sink.count() == len(second) == 501
    rows = sink.client.query(
        "daily",
        filter='id in ["doc-10", "doc-9", "new-3"]',
        output_fields=["text"],
        consistency_level="Strong",
    )
    assert {row["id"]: row["text"] for row in rows} == {
        "doc-10": "an edited paragraph",
        "new-3": "an added paragraph 3",
    }
    sink.close()
