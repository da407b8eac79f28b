"""A collection records the fingerprint of the model files that wrote it, and its own identity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymilvus import MilvusClient

from producer.errors import ModelMismatchError, SinkUnavailableError
from tests.support.milvus import DIM
from worker.milvus.model_record import ModelRecord
from worker.milvus.schema import MODEL_PROPERTY, collection_schema
from worker.milvus.sink import MilvusSink

MODEL = "./m"  # one string, as EMBEDQ_MODEL gives it, for two different folders
FILES_A, FILES_B = "a1" * 32, "b2" * 32


def _write(sink: MilvusSink, text: str = "hello") -> int:
    vector = np.ones((1, DIM), dtype=np.float32)
    return sink.upsert([text], [text], [{}], vector)


def _record(client: MilvusClient, collection: str) -> ModelRecord:
    return ModelRecord.decode(client.describe_collection(collection)["properties"][MODEL_PROPERTY])


def test_other_files_under_the_same_model_name_are_refused_with_both_named(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    assert _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A)) == 1

    with pytest.raises(ModelMismatchError) as refused:
        _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_B), "other")

    message = str(refused.value)
    assert FILES_A[:12] in message and FILES_B[:12] in message
    assert FILES_A not in message  # shown short, compared in full
    assert "EMBEDQ_MODEL" in message and "another collection" in message
    count = MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A).count()
    assert count == 1


def test_fingerprints_are_compared_in_full(milvus_client: MilvusClient, collection_name: str) -> None:
    same_start = FILES_A[:12] + "0" * 52
    _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A))
    with pytest.raises(ModelMismatchError):
        _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=same_start))


def test_a_collection_made_by_an_earlier_version_is_adopted_on_first_write(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    # What embedq recorded before fingerprints: the model string and the dimension only.
    milvus_client.create_collection(
        collection_name,
        schema=collection_schema(MODEL, DIM),
        properties={MODEL_PROPERTY: json.dumps({"model_id": MODEL, "dim": DIM})},
    )

    assert _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A)) == 1

    record = _record(milvus_client, collection_name)
    assert (record.model_id, record.dim, record.fingerprint) == (MODEL, DIM, FILES_A)
    assert record.collection_uuid
    with pytest.raises(ModelMismatchError):
        _write(MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_B))


def test_the_collection_identity_changes_when_it_is_dropped_and_made_again(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    sink = MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A)
    assert sink.collection_uuid() is None  # missing, and not created by asking
    assert not milvus_client.has_collection(collection_name)
    _write(sink)
    first = sink.collection_uuid()
    assert first is not None and sink.collection_uuid() == first

    milvus_client.drop_collection(collection_name)
    assert sink.collection_uuid() is None
    _write(sink)
    assert sink.collection_uuid() not in (None, first)


def test_a_collection_dropped_under_an_open_sink_is_a_retry_that_creates_it_again(
    milvus_client: MilvusClient, collection_name: str
) -> None:
    sink = MilvusSink(milvus_client, collection_name, MODEL, DIM, fingerprint=FILES_A)
    _write(sink)
    milvus_client.drop_collection(collection_name)
    with pytest.raises(SinkUnavailableError, match="dropped while in use"):
        _write(sink)
    assert _write(sink) == 1 and sink.count() == 1
