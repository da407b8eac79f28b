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
