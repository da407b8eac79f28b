"""Long documents as passages against real Milvus: ids and parents, no stale passages, grouping, deletes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymilvus import MilvusClient

from producer.backfill.idset import IdSet
from producer.protocol.messages import UpsertRequest, UpsertResult
from tests.support.milvus import DIM
from tests.support.models import CORPUS, build_model
from worker.encoding import StaticEncoder
from worker.encoding.splitting import SplitSpec
from worker.milvus.passages import delete_rows_of_missing_documents, has_passages
from worker.milvus.sink import MilvusSink
from worker.queue.tasks import CollectionSinks, TextLimits, upsert_request

pytestmark = pytest.mark.integration

LIMITS = TextLimits(max_texts=1000, max_text_chars=100_000)
LONG = " ".join(CORPUS[:7] * 3)  # about 250 tokens: several passages of 40
MEDIUM = " ".join(CORPUS[:4])  # about 60 tokens: two passages of 40


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> StaticEncoder:
    folder = build_model(tmp_path_factory.mktemp("m") / "model", dim=DIM, max_length=64)
    return StaticEncoder.from_pretrained(folder)


def _upsert(
    encoder: StaticEncoder,
    sinks: CollectionSinks,
    collection: str,
    docs: dict[str, str],
    split: tuple[int, int] | None = (40, 10),
) -> UpsertResult:
    request = UpsertRequest(
        model=encoder.model_id,
        collection=collection,
        ids=tuple(docs),
        texts=tuple(docs.values()),
        metadata=tuple({"lang": "en", "n": n} for n in range(len(docs))),
        skip_unchanged=True,
        split=split,
    )
    return upsert_request(encoder, sinks, request, LIMITS)


def _rows(client: MilvusClient, collection: str) -> dict[str, dict[str, object]]:
    rows = client.query(
        collection, filter='id != ""', output_fields=["text", "metadata"], consistency_level="Strong"
    )
    return {str(row["id"]): {"text": row["text"], **row["metadata"]} for row in rows}


@pytest.mark.parametrize(
    "milvus_uri", ["lite", pytest.param("server", marks=pytest.mark.milvus_server)], indirect=True
)
def test_passages_are_written_grouped_shrunk_without_leftovers_and_deleted_whole(
    milvus_client: MilvusClient, collection_name: str, encoder: StaticEncoder
) -> None:
    sinks = CollectionSinks(lambda name, model, dim: MilvusSink(milvus_client, name, model, dim))
    docs = {"long-a": LONG, "short-b": "The quick brown fox", "mid-c": MEDIUM}
    expected = {doc_id: encoder.split([text], SplitSpec(40, 10))[0] for doc_id, text in docs.items()}
    assert len(expected["long-a"]) > 3 and len(expected["short-b"]) == 1 and len(expected["mid-c"]) == 2

    result = _upsert(encoder, sinks, collection_name, docs)
    total = sum(map(len, expected.values()))
    assert (result.written, result.unchanged, result.passages) == (3, 0, total)
    rows = _rows(milvus_client, collection_name)
    assert set(rows) == {f"{doc_id}#{k}" for doc_id, parts in expected.items() for k in range(len(parts))}
    for doc_id, parts in expected.items():
        for k, part in enumerate(parts):
            row = rows[f"{doc_id}#{k}"]
            assert row["text"] == part
            found = (row["_parent"], row["_passage"], row["_passages"], row["lang"])
            assert found == (doc_id, k, len(parts), "en")
    sink = sinks.get(collection_name, encoder.model_id, DIM)
    assert sink.has_passages()

    # The best passage per document: as many hits as documents, each document once.
    query = encoder.encode(["Workers pull batches of documents from Redis"])[0]
    hits = sink.search(query, top_k=10, group_by_document=True, consistency_level="Strong")
    assert sorted(hit["document"] for hit in hits) == sorted(docs)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    assert len(sink.search(query, top_k=2, group_by_document=True, consistency_level="Strong")) == 2
    ungrouped = sink.search(query, top_k=10, consistency_level="Strong")
    # Without grouping, one document fills several places.
    assert len({hit["id"].split("#")[0] for hit in ungrouped}) < len(ungrouped)

    # Unchanged documents are left alone; a document that shrinks leaves no stale passages.
    assert (_upsert(encoder, sinks, collection_name, docs).unchanged, sink.count()) == (3, total)
    shrunk = {**docs, "long-a": "The lazy dog."}
    result = _upsert(encoder, sinks, collection_name, shrunk)
    assert (result.written, result.unchanged, result.passages) == (1, 2, 1)
    rows = _rows(milvus_client, collection_name)
    assert [row_id for row_id in rows if row_id.startswith("long-a")] == ["long-a#0"]
    assert rows["long-a#0"]["_passages"] == 1 and sink.count() == total - len(expected["long-a"]) + 1

    # Deleting a document deletes its passages.
    assert sink.delete(["mid-c"]) == 2
    assert sorted(_rows(milvus_client, collection_name)) == ["long-a#0", "short-b#0"]


def test_rows_of_documents_missing_from_the_file_go_and_passages_of_kept_ones_stay(
    milvus_client: MilvusClient, collection_name: str, encoder: StaticEncoder, tmp_path: Path
) -> None:
    sinks = CollectionSinks(lambda name, model, dim: MilvusSink(milvus_client, name, model, dim))
    _upsert(encoder, sinks, collection_name, {"keep": LONG, "gone": MEDIUM, "also-gone": "a short one"})
    assert has_passages(milvus_client, collection_name, timeout_s=30)
    file_ids = IdSet(tmp_path / "seen.sqlite")
    file_ids.add(["keep", "new-one"])
    sink = sinks.get(collection_name, encoder.model_id, DIM)
    deleted = delete_rows_of_missing_documents(
        milvus_client, collection_name, file_ids.known, sink.delete_rows, timeout_s=30
    )
    assert deleted == 2 + 1
    assert {row["_parent"] for row in _rows(milvus_client, collection_name).values()} == {"keep"}
    file_ids.close()


def test_a_plain_write_replaces_the_passages_and_counts_truncated_documents(
    milvus_client: MilvusClient, collection_name: str, encoder: StaticEncoder
) -> None:
    sinks = CollectionSinks(lambda name, model, dim: MilvusSink(milvus_client, name, model, dim))
    _upsert(encoder, sinks, collection_name, {"a": LONG, "b": "The quick brown fox"})
    result = _upsert(encoder, sinks, collection_name, {"a": LONG, "b": "The quick brown fox"}, split=None)
    assert (result.written, result.truncated, result.max_tokens) == (2, 1, 64)
    assert sorted(_rows(milvus_client, collection_name)) == ["a", "b"]
    # Split again: the plain rows go.
    result = _upsert(encoder, sinks, collection_name, {"a": LONG, "b": "The quick brown fox"})
    passages = len(encoder.split([LONG], SplitSpec(40, 10))[0])
    assert result.truncated == 0
    assert set(_rows(milvus_client, collection_name)) == {f"a#{k}" for k in range(passages)} | {"b#0"}
