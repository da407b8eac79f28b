"""Daily sync end to end: real workers and Redis, Milvus Lite; edits, removals, additions, safe deletes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, BackfillSummary
from producer.backfill.manifest import SyncManifest
from producer.client import EmbeddingClient
from producer.protocol.documents import Document
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, worker_sink
from worker.cli.sync import sync_backfill

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]


def _write(path: Path, docs: dict[str, str], bad_line_at: int | None = None, numbered: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for number, (doc_id, text) in enumerate(docs.items()):
            if number == bad_line_at:
                out.write("{not json\n")
            out.write(json.dumps({"id": doc_id, "text": text, **({"n": number} if numbered else {})}) + "\n")
    return path


def _sync(
    client: EmbeddingClient,
    worker: WorkerProcess,
    path: Path,
    state: Path,
    collection: str = "daily",
    manifest_path: Path | None = None,
) -> tuple[BackfillSummary, int | None]:
    options = BackfillOptions(path, collection, chunk_size=100, state_dir=state, skip_unchanged=True)
    manifest = SyncManifest(manifest_path or state.parent / f"{collection}.sqlite")
    return sync_backfill(worker.settings, client, options, manifest, delete=True)


def _stored(worker: WorkerProcess, collection: str) -> dict[str, str]:
    sink = worker_sink(worker, collection)
    try:
        rows = sink.client.query(
            collection, filter='id != ""', output_fields=["text"], consistency_level="Strong"
        )
        return {row["id"]: row["text"] for row in rows}
    finally:
        sink.close()


def test_a_daily_sync_writes_changes_deletes_removals_and_never_deletes_after_a_bad_read(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    first = {f"doc-{i}": f"paragraph {i} about queues, vectors and search" for i in range(500)}
    summary, deleted = _sync(client, worker, _write(tmp_path / "day1.jsonl", first), tmp_path / "s1")
    assert (summary.written, summary.unchanged, deleted) == (500, 0, 0)

    second = {k: v for k, v in first.items() if k not in {"doc-7", "doc-8", "doc-9"}}
    second.update({"doc-10": "an edited paragraph", "doc-11": "another edited one"})
    second.update({f"new-{i}": f"an added paragraph {i}" for i in range(4)})
    # The same file with one unreadable line in the middle (and one more document): written, but
    # nothing deleted.
    bad = _write(tmp_path / "bad.jsonl", {**second, "temp-1": "only in the bad file"}, bad_line_at=250)
    summary, deleted = _sync(client, worker, bad, tmp_path / "s2")
    assert deleted is None and summary.failed == 1
    sink = worker_sink(worker, "daily")
    assert sink.count() == 500 + 4 + 1  # the removed documents are all still there

    # The next complete sync deletes the removed ones and the one the failed run wrote.
    summary, deleted = _sync(client, worker, _write(tmp_path / "day2.jsonl", second), tmp_path / "s3")
    assert (summary.written, summary.unchanged, deleted) == (0, 501, 3 + 1)
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


def test_a_rerun_trusts_a_sealed_manifest_and_falls_back_when_another_writer_changed_the_collection(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    submit = client.submit_upsert

    def counting(collection: str, documents: list[Document], **kwargs: bool) -> str:
        sent.extend(doc.id for doc in documents)
        return submit(collection, documents, **kwargs)

    monkeypatch.setattr(client, "submit_upsert", counting)
    day1 = {f"doc-{i}": f"paragraph {i} about queues and vectors" for i in range(300)}
    summary, deleted = _sync(
        client, worker, _write(tmp_path / "day1.jsonl", day1, numbered=False), tmp_path / "s1", "sealed"
    )
    assert (summary.written, deleted) == (300, 0)
    manifest = SyncManifest(tmp_path / "sealed.sqlite")
    assert manifest.generation() is not None and manifest.counts() == (300, 300)
    manifest.close()

    # Trusted: only the edited and added documents go through the queue; removals from the manifest.
    day2 = {k: v for k, v in day1.items() if k != "doc-5"}
    day2.update({"doc-6": "an edited paragraph", "new-1": "an added paragraph"})
    summary, deleted = _sync(
        client, worker, _write(tmp_path / "day2.jsonl", day2, numbered=False), tmp_path / "s2", "sealed"
    )
    assert (summary.written, summary.unchanged, deleted) == (2, 298, 1)
    assert _stored(worker, "sealed") == day2
    assert sent[300:] == ["doc-6", "new-1"]  # the 298 unchanged never left the producer

    # Another producer writes a new row and edits one in place: the row count no longer matches the
    # mark, so the next sync checks every chunk against Milvus and restores the file's contents.
    with EmbeddingClient.from_settings(worker.settings) as other:
        task = other.submit_upsert(
            "sealed", [Document("doc-7", "changed by someone else"), Document("x", "y")]
        )
        wait_until(lambda: other.reader.outcomes([task])[0].state == "done", "the other producer's write")
    summary, deleted = _sync(
        client, worker, _write(tmp_path / "day3.jsonl", day2, numbered=False), tmp_path / "s3", "sealed"
    )
    assert (summary.written, summary.unchanged, deleted) == (1, len(day2) - 1, 1)
    assert _stored(worker, "sealed") == day2
    assert len(sent) == 302 + len(day2)  # every document checked against Milvus

    # A manifest from elsewhere (a missing one here) gives the same exact result.
    summary, deleted = _sync(
        client,
        worker,
        _write(tmp_path / "day4.jsonl", day1, numbered=False),
        tmp_path / "s4",
        "sealed",
        tmp_path / "fresh.sqlite",
    )
    assert (summary.written, summary.unchanged, deleted) == (2, 298, 1)
    assert _stored(worker, "sealed") == day1
