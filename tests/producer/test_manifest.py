"""The sync manifest: recorded hashes, the generation, and which documents a trusted one leaves out."""

from __future__ import annotations

from pathlib import Path

from producer.backfill.idset import SeenIds
from producer.backfill.known_lines import Unchanged
from producer.backfill.manifest import LocalHashes, SyncManifest
from producer.backfill.readers import FieldNames, Rejected, read_records
from producer.protocol.content import content_hash
from producer.protocol.documents import Document


def test_a_trusted_manifest_leaves_out_documents_whose_recorded_hash_matches(tmp_path: Path) -> None:
    manifest = SyncManifest(tmp_path / "m.sqlite")
    docs = [Document("a", "one"), Document("b", "two", {"lang": "en"}), Document("c", "three")]
    manifest.record((doc.id, content_hash("m", doc.text, doc.metadata), None) for doc in docs[:2])
    edited = [docs[0], Document("b", "two", {"lang": "fr"}), docs[2]]

    send, pairs, left_out = LocalHashes(manifest, "m", trusted=True).split(edited)
    assert [doc.id for doc in send] == ["b", "c"] and left_out == 1
    assert pairs == [(doc.id, content_hash("m", doc.text, doc.metadata), None) for doc in send]
    # Another model's hashes never match; an untrusted manifest leaves nothing out.
    assert LocalHashes(manifest, "other", trusted=True).split(edited)[2] == 0
    assert LocalHashes(manifest, "m", trusted=False).split(edited)[2] == 0
    manifest.close()


def test_the_generation_is_dropped_when_a_run_starts_and_hashes_when_it_is_not_trusted(
    tmp_path: Path,
) -> None:
    manifest = SyncManifest(tmp_path / "m.sqlite")
    assert manifest.generation() is None
    manifest.record([("a", "h1", b"l1"), ("b", "h2", None)])
    manifest.seal("g1")
    assert manifest.generation() == "g1" and manifest.counts() == (2, 2)
    manifest.unseal(forget_hashes=False)
    assert manifest.generation() is None and manifest.hashes(["a", "b"]) == {"a": "h1", "b": "h2"}
    assert manifest.lines([b"l1", b"l2"]) == {b"l1": "a"}
    manifest.unseal(forget_hashes=True)
    assert manifest.counts() == (2, 0) and manifest.sample(5) == [] and manifest.lines([b"l1"]) == {}
    with SeenIds(tmp_path) as seen:  # a complete sync of a file holding b and c
        list(seen.recording([Document("b", "x"), Document("c", "y")]))
        assert [ids for ids in manifest.missing(seen.ids, 10)] == [["a"]]
        manifest.replace(seen.ids)
    assert manifest.counts() == (2, 0) and manifest.hashes(["b", "c"]) == {}
    manifest.close()


def test_a_line_recorded_with_a_trusted_hash_is_not_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "day.jsonl"
    lines = [
        '{"id": "a", "text": "one"}',
        '{"id": "b", "text": "two"}',
        "not json",
        '{"id": "c", "text": "3"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    manifest = SyncManifest(tmp_path / "m.sqlite")
    first = LocalHashes(manifest, "m", trusted=False)
    records = list(read_records(path, None, FieldNames(), first))
    assert [type(record) for record in records] == [Document, Document, Rejected, Document]
    _, confirmed, _ = first.split([record for record in records if isinstance(record, Document)])
    first.confirmed(confirmed[:2])  # the chunk holding c was not confirmed
    path.write_text("\n".join([lines[0], '{"id": "b", "text": "2"}', *lines[2:]]) + "\n")
    rerun = LocalHashes(manifest, "m", trusted=True)
    records = list(read_records(path, None, FieldNames(), rerun))
    assert records[0] == Unchanged("a") and isinstance(records[2], Rejected)
    assert [record.id for record in records if isinstance(record, Document)] == ["b", "c"]
    # The same bytes read with other field names, or untrusted, are parsed again.
    for other in (LocalHashes(manifest, "m", trusted=False), LocalHashes(manifest, "m2", trusted=True)):
        assert Unchanged("a") not in list(read_records(path, None, FieldNames(), other))
    assert Unchanged("a") not in list(read_records(path, None, FieldNames(text="text", id=None), rerun))
    manifest.close()
