"""The on-disk id set of a sync: ids recorded while reading, membership and sorted batches, cleanup."""

from __future__ import annotations

from pathlib import Path

from producer.backfill.idset import SeenIds
from producer.backfill.readers import Rejected
from producer.protocol.documents import Document


def test_ids_are_recorded_while_reading_and_the_read_is_complete_only_at_the_end(
    tmp_path: Path,
) -> None:
    records = [Document(f"id-{n:05d}", "text") for n in range(25_000)]
    with SeenIds(tmp_path) as seen:
        stream = seen.recording(reversed(records))
        first = [next(stream) for _ in range(12_000)]
        assert not seen.complete  # stopped half-way: deletes would be unsafe
        assert len(first) + sum(1 for _ in stream) == 25_000
        assert seen.complete and len(seen.ids) == 25_000
        assert seen.ids.known(["id-00007", "nope", "id-24999"]) == {"id-00007", "id-24999"}
        batches = list(seen.ids.batches(10_000))
        assert [len(batch) for batch in batches] == [10_000, 10_000, 5_000]
        assert [doc_id for batch in batches for doc_id in batch] == sorted(d.id for d in records)
        directory = seen.ids.path.parent
    assert not directory.exists()


def test_a_rejected_record_makes_the_read_incomplete(tmp_path: Path) -> None:
    with SeenIds(tmp_path) as seen:
        list(seen.recording([Document("a", "x"), Rejected("line 2", "not JSON"), Document("b", "y")]))
        assert seen.read_to_end and seen.rejected == 1 and not seen.complete
        assert seen.ids.known(["a", "b"]) == {"a", "b"}


def test_a_manifest_gives_the_ids_a_new_file_lacks_and_learns_from_failed_runs(tmp_path: Path) -> None:
    from producer.backfill.manifest import SyncManifest

    manifest = SyncManifest.for_collection(tmp_path / "sync", "/data/embedq.db", "docs")
    assert manifest.path != SyncManifest.for_collection(tmp_path / "sync", "/data/other.db", "docs").path
    assert not manifest.exists()
    with SeenIds(tmp_path) as day1:
        list(day1.recording(Document(f"d{n}", "t") for n in range(5)))
        manifest.replace(day1.ids)
    assert manifest.exists()
    with SeenIds(tmp_path) as failed:  # a failed run read (and may have written) d9
        list(failed.recording([Document("d9", "t")]))
        manifest.add(failed.ids)
    with SeenIds(tmp_path) as day2:
        list(day2.recording(Document(f"d{n}", "t") for n in (0, 2, 3, 7)))
        assert [id_ for batch in manifest.missing(day2.ids, 2) for id_ in batch] == ["d1", "d4", "d9"]
        manifest.replace(day2.ids)
        assert list(manifest.missing(day2.ids, 10)) == []
