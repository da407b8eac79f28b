"""MilvusSink against real Milvus: Milvus Lite and a standalone Milvus server (the ``milvus`` wheel)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from pymilvus import MilvusClient

from producer.backfill.ids import document_id
from producer.errors import ConfigError, InvalidInputError, ModelMismatchError
from tests.support.milvus import DIM
from worker.milvus.column_upsert import ColumnUpsert
from worker.milvus.connection import connect_milvus
from worker.milvus.rows import build_rows
from worker.milvus.sink import MilvusSink

pytestmark = pytest.mark.integration

SinkFactory = Callable[..., MilvusSink]


def unit_vectors(count: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_upsert_writes_rows_and_the_same_ids_again_replace_them(make_sink: SinkFactory) -> None:
    sink = make_sink()
    ids = [f"doc-{i}" for i in range(5)]
    vectors = unit_vectors(5)

    assert sink.upsert(ids, [f"first {i}" for i in ids], [{"n": i} for i in range(5)], vectors) == 5
    assert sink.count() == 5

    assert sink.upsert(ids, [f"second {i}" for i in ids], [{"n": -i} for i in range(5)], vectors) == 5
    assert sink.count() == 5
    best = sink.search(vectors[2], top_k=1, consistency_level="Strong")[0]
    assert best["id"] == "doc-2"
    assert best["text"] == "second doc-2"
    assert best["metadata"] == {"n": -2}


def test_ids_derived_from_text_make_resending_a_document_idempotent(make_sink: SinkFactory) -> None:
    sink = make_sink()
    texts = ["alpha", "beta", "gamma", "beta"]
    ids = [document_id(text) for text in texts]
    assert ids[1] == ids[3] != ids[0]
    assert all(len(doc_id) == 32 and int(doc_id, 16) >= 0 for doc_id in ids)

    assert sink.upsert(ids, texts, [{}] * 4, unit_vectors(4)) == 3
    assert sink.upsert(ids[:2], texts[:2], [{}] * 2, unit_vectors(2, seed=1)) == 2
    assert sink.count() == 3


def test_search_returns_the_nearest_text_first(make_sink: SinkFactory) -> None:
    sink = make_sink()
    vectors = unit_vectors(30, seed=3)
    ids = [f"doc-{i}" for i in range(30)]
    sink.upsert(ids, [f"text of {i}" for i in ids], [{"row": i} for i in range(30)], vectors)

    query = vectors[7] + 0.05 * unit_vectors(1, seed=4)[0]
    hits = sink.search(query, top_k=5, consistency_level="Strong")

    assert hits[0]["id"] == "doc-7"
    assert hits[0]["text"] == "text of doc-7"
    assert hits[0]["metadata"] == {"row": 7}
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(hits) == 5
    expected_similarity = float(query @ vectors[7] / np.linalg.norm(query))
    assert hits[0]["score"] == pytest.approx(expected_similarity, abs=1e-4)

    only_ids = sink.search(query, top_k=2, output_fields=[], consistency_level="Strong")
    assert [set(hit) for hit in only_ids] == [{"id", "score"}, {"id", "score"}]


def test_a_collection_of_another_model_or_dimension_is_refused(make_sink: SinkFactory) -> None:
    make_sink("model-a").ensure_collection()

    with pytest.raises(ModelMismatchError) as other_model:
        make_sink("model-b").upsert(["x"], ["x"], [{}], unit_vectors(1))
    message = str(other_model.value)
    assert "model-a" in message and "model-b" in message and "collection" in message

    with pytest.raises(ModelMismatchError, match="dim 16"):
        make_sink("model-a", dim=16).ensure_collection()
    assert make_sink("model-a").count() == 0


def test_a_collection_not_made_by_embedq_is_refused(
    milvus_client: MilvusClient, collection_name: str, make_sink: SinkFactory
) -> None:
    milvus_client.create_collection(collection_name, dimension=DIM, id_type="string", max_length=64)
    with pytest.raises(ConfigError, match="another collection name"):
        make_sink().ensure_collection()


def test_vectors_of_another_dimension_are_refused_before_writing(make_sink: SinkFactory) -> None:
    sink = make_sink()
    with pytest.raises(ModelMismatchError, match="dimension 9"):
        sink.upsert(["a"], ["a"], [{}], unit_vectors(1, dim=DIM + 1))
    with pytest.raises(ModelMismatchError):
        sink.search(unit_vectors(1, dim=DIM + 1)[0])
    assert sink.count() == 0


BAD_ROWS: dict[str, tuple[list[object], list[object], list[object], np.ndarray]] = {
    "fewer-texts": (["a", "b"], ["a"], [{}, {}], unit_vectors(2)),
    "more-vectors": (["a"], ["a"], [{}], unit_vectors(2)),
    "empty-id": ([""], ["a"], [{}], unit_vectors(1)),
    "id-not-str": ([7], ["a"], [{}], unit_vectors(1)),
    "id-over-512-bytes": (["é" * 257], ["a"], [{}], unit_vectors(1)),
    "text-not-str": (["a"], [b"bytes"], [{}], unit_vectors(1)),
    "text-over-65535-bytes": (["a"], ["é" * 32768], [{}], unit_vectors(1)),
    "metadata-not-dict": (["a"], ["a"], [["not", "a", "dict"]], unit_vectors(1)),
    "metadata-nan": (["a"], ["a"], [{"f": float("nan")}], unit_vectors(1)),
    "metadata-not-json": (["a"], ["a"], [{"f": object()}], unit_vectors(1)),
    "nan-vector": (["a"], ["a"], [{}], np.full((1, DIM), np.nan, dtype=np.float32)),
    "1d-vectors": (["a"], ["a"], [{}], unit_vectors(1)[0]),
}


def test_bad_rows_are_invalid_input_and_nothing_is_written(
    make_sink: SinkFactory, subtests: pytest.Subtests
) -> None:
    sink = make_sink()
    sink.ensure_collection()
    for case, (ids, texts, metadata, vectors) in BAD_ROWS.items():
        with subtests.test(case), pytest.raises(InvalidInputError):
            sink.upsert(ids, texts, metadata, vectors)  # type: ignore[arg-type]
    assert sink.count() == 0
    assert sink.upsert(["ok"], ["é" * 32767], [{"f": 1.5}], unit_vectors(1)) == 1


def test_a_repeated_id_in_one_request_keeps_its_last_row(make_sink: SinkFactory) -> None:
    sink = make_sink()
    vectors = unit_vectors(3, seed=5)
    assert sink.upsert(["a", "b", "a"], ["a first", "b", "a last"], [{}, {}, {"v": 2}], vectors) == 2
    assert sink.count() == 2
    best = sink.search(vectors[2], top_k=1, consistency_level="Strong")[0]
    assert (best["id"], best["text"], best["metadata"]) == ("a", "a last", {"v": 2})


def test_delete_returns_the_number_deleted_on_lite_and_server_alike(make_sink: SinkFactory) -> None:
    sink = make_sink()
    ids = ["plain", "it's", 'say "hi"', "back\\slash", "ünïcode"]
    sink.upsert(ids, ids, [{}] * 5, unit_vectors(5))

    assert sink.delete(["plain", "it's", "plain"]) == 2
    assert sink.count() == 3
    assert sink.delete(['say "hi"', "back\\slash", "ünïcode"]) == 3
    assert sink.count() == 0
    assert sink.delete([]) == 0


def test_requests_are_split_into_batches_under_the_size_limit(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    sink = MilvusSink(milvus_client, collection_name, "model-a", DIM, max_request_bytes=2_000)
    ids = [f"doc-{i}" for i in range(40)]
    assert sink.upsert(ids, ["x" * 200] * 40, [{}] * 40, unit_vectors(40)) == 40
    assert sink.count() == 40


def test_search_loads_a_collection_released_as_after_a_restart(
    milvus_client: MilvusClient, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    vectors = unit_vectors(3)
    sink.upsert(["a", "b", "c"], ["a", "b", "c"], [{}] * 3, vectors)
    milvus_client.release_collection(sink.collection)

    assert sink.search(vectors[1], top_k=1, consistency_level="Strong")[0]["id"] == "b"
    assert sink.count() == 3


def test_concurrent_creation_gives_one_collection_both_sinks_can_use(
    milvus_uri: str, milvus_client: MilvusClient, make_sink: SinkFactory
) -> None:
    clients = [milvus_client, connect_milvus(milvus_uri, dedicated=True)]
    sinks = [make_sink(client=client) for client in clients]
    barrier = threading.Barrier(len(sinks))
    errors: list[BaseException] = []

    def create(sink: MilvusSink) -> None:
        barrier.wait()
        try:
            sink.ensure_collection()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(sink,)) for sink in sinks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    sinks[0].upsert(["a"], ["a"], [{}], unit_vectors(1))
    sinks[1].upsert(["b"], ["b"], [{}], unit_vectors(1, seed=1))
    assert sinks[0].count() == sinks[1].count() == 2
    assert milvus_client.list_collections().count(sinks[0].collection) == 1
    clients[1].close()


def test_server_kind_is_detected(milvus_kind: str, make_sink: SinkFactory) -> None:
    assert make_sink().server_kind == milvus_kind


AWKWARD_ROWS = {
    "ids": ["plain", "ünïcode ✓", 'quote "q"', "x" * 512],
    "texts": ["", "中文 and emoji 🎉", "tab\tnew\nline", "é" * 32767],
    "metadata": [{}, {"nested": {"list": [1, 2.5, None, "é"], "flag": True}}, {"n": -1}, {"big": 2**62}],
}


def test_column_wise_requests_are_byte_for_byte_pymilvus_own(make_sink: SinkFactory) -> None:
    sink = make_sink()
    vectors = unit_vectors(4, seed=9)
    vectors[0, :3] = [0.0, -0.0, 1e-38]
    assert sink.upsert(AWKWARD_ROWS["ids"], AWKWARD_ROWS["texts"], AWKWARD_ROWS["metadata"], vectors) == 4
    builder = sink._column_upsert
    assert builder is not None, "the column-wise path was not taken with this pymilvus"
    rows = build_rows(
        AWKWARD_ROWS["ids"],
        AWKWARD_ROWS["texts"],
        AWKWARD_ROWS["metadata"],
        vectors,
        collection=sink.collection,
        model_id=sink.model_id,
        dim=sink.dim,
    )
    assert builder.same_as_row_request(rows.ids, rows.vectors, rows.texts, rows.metadata, rows.as_dicts())
    stored = sink.client.query(
        sink.collection,
        filter='id == "ünïcode ✓"',
        output_fields=["text", "metadata", "vector"],
        consistency_level="Strong",
    )[0]
    assert stored["text"] == AWKWARD_ROWS["texts"][1]
    assert stored["metadata"] == AWKWARD_ROWS["metadata"][1]
    np.testing.assert_array_equal(np.asarray(stored["vector"], dtype=np.float32), vectors[1])


def test_a_column_wise_builder_that_differs_from_pymilvus_is_not_used(
    make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_build = ColumnUpsert.build

    def off_by_one_vector(self: ColumnUpsert, ids, vectors, texts, metadata):  # type: ignore[no-untyped-def]
        return original_build(self, ids, vectors + 1.0, texts, metadata)

    monkeypatch.setattr(ColumnUpsert, "build", off_by_one_vector)
    sink = make_sink()
    vectors = unit_vectors(12, seed=4)
    ids = [f"doc-{i}" for i in range(12)]
    assert sink.upsert(ids, ids, [{}] * 12, vectors) == 12
    assert sink._column_checked and sink._column_upsert is None
    assert sink.upsert(ids[:2], ids[:2], [{}] * 2, vectors[:2]) == 2
    assert sink.search(vectors[7], top_k=1, consistency_level="Strong")[0]["id"] == "doc-7"


@pytest.mark.parametrize("broken", ["build", "send"])
def test_a_pymilvus_that_takes_the_column_wise_calls_differently_gets_the_public_upsert(
    make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    def incompatible(*args: object, **kwargs: object) -> None:
        raise TypeError("unexpected keyword argument")

    monkeypatch.setattr(ColumnUpsert, broken, incompatible)
    sink = make_sink()
    vectors = unit_vectors(12, seed=6)
    ids = [f"doc-{i}" for i in range(12)]
    assert sink.upsert(ids, ids, [{}] * 12, vectors) == 12
    assert sink._column_upsert is None
    assert sink.upsert(ids[:3], ids[:3], [{}] * 3, vectors[:3]) == 3
    assert sink.count() == 12
    assert sink.search(vectors[5], top_k=1, consistency_level="Strong")[0]["id"] == "doc-5"


def test_without_the_column_wise_calls_the_public_upsert_is_used(
    make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ColumnUpsert, "create", classmethod(lambda cls, *args, **kwargs: None))
    sink = make_sink()
    vectors = unit_vectors(3, seed=2)
    assert sink.upsert(["a", "b", "c"], ["a", "b", "c"], [{}] * 3, vectors) == 3
    assert sink._column_upsert is None
    assert sink.search(vectors[2], top_k=1, consistency_level="Strong")[0]["id"] == "c"
