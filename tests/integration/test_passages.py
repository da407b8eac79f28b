"""Long documents end to end: real workers and Redis, Milvus Lite; passages synced, truncation reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.backfill import BackfillOptions, BackfillSummary, run_backfill
from producer.backfill.idset import SeenIds
from producer.backfill.manifest import SyncManifest
from producer.client import EmbeddingClient
from producer.errors import ConfigError
from tests.support.models import CORPUS
from tests.support.workers import WorkerProcess, worker_sink
from worker.cli.deletes import delete_missing
from worker.cli.output import backfill_summary_line

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lite_server_stopped_after_module")]

LONG = " ".join(CORPUS * 3)  # about 600 tokens of the bundled model: more than its 512


def _write(path: Path, docs: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": k, "text": v, "lang": "en"}) + "\n" for k, v in docs.items()))
    return path


def _sync(
    client: EmbeddingClient, worker: WorkerProcess, path: Path, collection: str, split: int | None
) -> tuple[BackfillSummary, int | None]:
    state = path.parent / f"state-{path.stem}"
    options = BackfillOptions(
        path,
        collection,
        chunk_size=4,
        state_dir=state,
        skip_unchanged=True,
        split_tokens=split,
        overlap_tokens=16 if split else 0,
    )
    manifest = SyncManifest(path.parent / f"{collection}.sqlite")
    with SeenIds(path.parent) as seen:
        summary = run_backfill(client, options, seen=seen)
        return summary, delete_missing(worker.settings, collection, summary, seen, manifest)


def _ids(worker: WorkerProcess, collection: str) -> set[str]:
    sink = worker_sink(worker, collection)
    try:
        rows = sink.client.query(
            collection, filter='id != ""', output_fields=["id"], consistency_level="Strong"
        )
        return {str(row["id"]) for row in rows}
    finally:
        sink.close()


def test_a_daily_sync_of_passages_leaves_no_stale_rows(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    docs = {f"long-{i}": f"{i} {LONG}" for i in range(3)} | {f"short-{i}": CORPUS[i] for i in range(5)}
    summary, deleted = _sync(client, worker, _write(tmp_path / "day1.jsonl", docs), "articles", 128)
    assert (summary.written, summary.truncated, deleted) == (8, 0, 0)
    first = _ids(worker, "articles")
    long_passages = {row_id for row_id in first if row_id.startswith("long-0#")}
    assert len(long_passages) >= 5 and {f"short-{i}#0" for i in range(5)} <= first
    assert summary.passages == len(first)

    # long-1 shrinks to one passage, long-2 and short-4 leave the file, new-0 arrives.
    day2 = {k: v for k, v in docs.items() if k not in {"long-2", "short-4"}}
    day2 |= {"long-1": "now a short text", "new-0": CORPUS[6]}
    summary, deleted = _sync(client, worker, _write(tmp_path / "day2.jsonl", day2), "articles", 128)
    assert (summary.written, summary.unchanged) == (2, 5)
    after = _ids(worker, "articles")
    assert {row_id.split("#")[0] for row_id in after} == set(day2)
    assert [row_id for row_id in after if row_id.startswith("long-1#")] == ["long-1#0"]
    assert long_passages <= after
    assert deleted == len([row_id for row_id in first if row_id.startswith(("long-2#", "short-4#"))])

    # Without the sync manifest (a first sync from another directory), the collection is read and
    # its rows compared by document: short-0 goes, every passage of the kept documents stays.
    (tmp_path / "articles.sqlite").unlink()
    day3 = {k: v for k, v in day2.items() if k != "short-0"}
    summary, deleted = _sync(client, worker, _write(tmp_path / "day3.jsonl", day3), "articles", 128)
    assert (summary.written, summary.unchanged, deleted) == (0, len(day3), 1)
    assert _ids(worker, "articles") == after - {"short-0#0"}


def test_a_backfill_without_splitting_says_how_many_documents_it_truncated(
    worker: WorkerProcess, client: EmbeddingClient, tmp_path: Path
) -> None:
    docs = {f"long-{i}": f"{i} {LONG}" for i in range(3)} | {"short": CORPUS[0]}
    options = BackfillOptions(_write(tmp_path / "c.jsonl", docs), "cut", state_dir=tmp_path / "s")
    summary = run_backfill(client, options)
    assert (summary.written, summary.truncated, summary.max_tokens) == (4, 3, 512)
    line = backfill_summary_line(summary, "cut")
    assert "3 documents were longer than 512 tokens and truncated: use --split-tokens 512" in line


def test_passages_longer_than_the_model_reads_are_refused_before_sending(
    client: EmbeddingClient, tmp_path: Path
) -> None:
    options = BackfillOptions(
        _write(tmp_path / "c.jsonl", {"a": LONG}), "never", state_dir=tmp_path / "s", split_tokens=1000
    )
    with pytest.raises(ConfigError, match=r"--split-tokens 1000 .*max_length 512"):
        run_backfill(client, options)
