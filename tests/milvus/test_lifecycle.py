"""Corpus lifecycle against real Milvus: unchanged rows skipped, search by the recorded model, aliases."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import numpy as np
import pytest
from pymilvus import MilvusClient

from producer.errors import InvalidInputError
from producer.protocol.messages import UpsertRequest
from tests.support.fakes import FakeEncoder
from tests.support.milvus import DIM
from worker.milvus.aliases import MilvusAccess, adopt, drop, physical_name, point_alias
from worker.milvus.catalog import collection_model, list_collections
from worker.milvus.sink import MilvusSink
from worker.milvus.sync import delete_missing_ids
from worker.queue.tasks import CollectionSinks, TextLimits, upsert_request

pytestmark = pytest.mark.integration

LIMITS = TextLimits(max_texts=1000, max_text_chars=10_000)


class CountingEncoder(FakeEncoder):
    """The fake encoder, counting the texts it was asked to encode."""

    def __init__(self, model_id: str, dim: int = DIM) -> None:
        super().__init__(model_id, dim)
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return super().encode(texts) + 1.0  # never a zero vector (cosine)


def _upsert(
    encoder: CountingEncoder, sinks: CollectionSinks, collection: str, docs: dict[str, str]
) -> tuple[int, int]:
    request = UpsertRequest(
        model=encoder.model_id,
        collection=collection,
        ids=tuple(docs),
        texts=tuple(docs.values()),
        metadata=tuple({"lang": "en" if int(i.split("-")[1]) % 2 else "fr"} for i in docs),
        skip_unchanged=True,
    )
    result = upsert_request(encoder, sinks, request, LIMITS)
    return result.written, result.unchanged


@pytest.mark.parametrize(
    "milvus_uri", ["lite", pytest.param("server", marks=pytest.mark.milvus_server)], indirect=True
)
def test_a_rerun_encodes_and_writes_only_new_and_changed_documents(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    encoder = CountingEncoder("model-a")
    sinks = CollectionSinks(lambda name, model, dim: MilvusSink(milvus_client, name, model, dim))
    first = {f"doc-{i}": f"text {i}" for i in range(50)}
    assert _upsert(encoder, sinks, collection_name, first) == (50, 0)
    assert encoder.texts == 50

    edited = {f"doc-{i}": f"text {i}" + (" edited" if i in (3, 4) else "") for i in range(2, 55)}
    assert _upsert(encoder, sinks, collection_name, edited) == (2 + 5, 46)
    assert encoder.texts == 50 + 7  # only the changed and the new ones were encoded

    sink = sinks.get(collection_name, "model-a", DIM)
    assert sink.count() == 55
    stored = {
        row["id"]: row["text"]
        for row in milvus_client.query(
            collection_name,
            filter='id in ["doc-3", "doc-0"]',
            output_fields=["text"],
            consistency_level="Strong",
        )
    }
    assert stored == {"doc-3": "text 3 edited", "doc-0": "text 0"}
    # The ids the new file lacks are found range by range (sorted batches of the file's ids) and deleted.
    file_ids = sorted(edited)
    batches = [file_ids[start : start + 7] for start in range(0, len(file_ids), 7)]
    deleted: list[str] = []

    def delete(ids: list[str]) -> int:
        deleted.extend(ids)
        return sink.delete(ids)

    assert delete_missing_ids(milvus_client, collection_name, batches, delete, timeout_s=30) == 2
    assert sorted(deleted) == ["doc-0", "doc-1"]
    assert sink.count() == 53
    # Search hits never show the recorded hash.
    hit = sink.search(encoder.encode(["text 10"])[0], top_k=1, consistency_level="Strong")[0]
    assert set(hit["metadata"]) == {"lang"}


def _fill(client: MilvusClient, collection: str, model_id: str, count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    sink = MilvusSink(client, collection, model_id, DIM)
    sink.upsert(
        [f"doc-{i}" for i in range(count)],
        [f"{model_id} text {i}" for i in range(count)],
        [{"lang": "en" if i % 2 else "fr", "n": i} for i in range(count)],
        vectors,
    )
    return vectors


def test_search_uses_the_recorded_model_and_filters_and_rejects_a_bad_filter_first(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    from worker.milvus.querying import search_text

    vectors = _fill(milvus_client, collection_name, "model-a", 20, seed=1)
    asked: list[str] = []

    def embed(model_id: str, texts: Sequence[str]) -> np.ndarray:
        asked.append(model_id)
        return vectors[[4]]

    found = search_text(milvus_client, collection_name, "q", embed, top_k=3, consistency_level="Strong")
    assert asked == ["model-a"] and found.model_id == "model-a"
    assert found.hits[0]["id"] == "doc-4"
    only_odd = search_text(
        milvus_client,
        collection_name,
        "q",
        embed,
        top_k=5,
        filter_expr='metadata["lang"] == "en"',
        output_fields=["metadata"],
        consistency_level="Strong",
    )
    assert len(only_odd.hits) == 5 and all(hit["metadata"]["lang"] == "en" for hit in only_odd.hits)
    assert all("text" not in hit for hit in only_odd.hits)
    with pytest.raises(InvalidInputError, match="unknown field 'lang'"):
        search_text(milvus_client, collection_name, "q", embed, filter_expr='lang == "en"')
    assert len(asked) == 2  # the invalid filter was refused before the query was embedded


def test_an_old_collection_is_adopted_and_an_alias_switch_never_mixes_models(
    milvus_client: MilvusClient,
) -> None:
    from worker.milvus.querying import search_text

    name = f"t_{uuid.uuid4().hex[:12]}"
    access = MilvusAccess(milvus_client, threading.Lock())
    vectors_a = _fill(milvus_client, name, "model-a", 30, seed=2)  # an old-style collection: no alias
    old = adopt(access, name)
    assert old == physical_name(name, "model-a") != name
    assert collection_model(milvus_client, name) == (old, "model-a", DIM)
    listed = {info.name: info for info in list_collections(milvus_client)}
    assert listed[old].aliases == (name,) and listed[old].model_id == "model-a" and listed[old].dim == DIM

    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def embed(model_id: str, texts: Sequence[str]) -> np.ndarray:
        return vectors_a[[0]] if model_id == "model-a" else vectors_b[[0]]

    def search_loop() -> None:
        while not stop.is_set():
            try:
                found = search_text(milvus_client, name, "q", embed, top_k=1, consistency_level="Strong")
                texts = {hit["text"].split()[0] for hit in found.hits}
                assert texts == {found.model_id}, (texts, found.model_id)  # one model's rows only
                seen.append(found.model_id)
            except BaseException as exc:
                errors.append(exc)

    thread = threading.Thread(target=search_loop)
    thread.start()
    try:
        new = physical_name(name, "model-b")
        vectors_b = _fill(milvus_client, new, "model-b", 30, seed=3)
        point_alias(access, name, new)
        while not seen or seen[-1] != "model-b":
            assert thread.is_alive() and not errors, errors
        drop(access, old)
        count = len(seen)
        while len(seen) < count + 3:
            assert thread.is_alive() and not errors, errors
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    switch = seen.index("model-b")
    assert set(seen[:switch]) == {"model-a"} and set(seen[switch:]) == {"model-b"}
    assert not milvus_client.has_collection(old)
    milvus_client.drop_alias(name)
    milvus_client.drop_collection(new)


def test_ranges_with_many_missing_ids_are_paged(
    milvus_client: MilvusClient, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.milvus.sync as sync

    monkeypatch.setattr(sync, "MISSING_PAGE", 4)  # ranges of more than 3 stored ids take the paged path
    _fill(milvus_client, collection_name, "model-a", 40, seed=5)
    sink = MilvusSink(milvus_client, collection_name, "model-a", DIM)
    kept = sorted(f"doc-{i}" for i in range(0, 40, 5))
    deleted = sync.delete_missing_ids(
        milvus_client, collection_name, [kept[:3], kept[3:6], kept[6:]], sink.delete, timeout_s=30
    )
    assert deleted == 32
    assert (
        sorted(
            row["id"]
            for row in milvus_client.query(
                collection_name, filter='id != ""', output_fields=["id"], consistency_level="Strong"
            )
        )
        == kept
    )
