from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.serialization import dumps, loads, prepare_accept_content

from producer.errors import MessageDecodeError
from producer.protocol.messages import EmbedRequest, EmbedResult, JobManifest, WorkerPresence
from producer.protocol.names import queue_for_model


def _through_msgpack(payload: object) -> object:
    """Serialize and parse as Celery does for task arguments and results."""
    content_type, encoding, body = dumps(payload, serializer="msgpack")
    return loads(body, content_type, encoding, accept=prepare_accept_content(["msgpack"]))


@given(texts=st.lists(st.text(max_size=50), max_size=20), kind=st.sampled_from(["document", "query"]))
def test_request_round_trips_through_msgpack(texts: list[str], kind: str) -> None:
    request = EmbedRequest(model="org/model", kind=kind, texts=tuple(texts))  # type: ignore[arg-type]
    assert EmbedRequest.decode(_through_msgpack(request.encode())) == request


def test_result_carries_raw_little_endian_float32_bytes() -> None:
    vectors = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    result = EmbedResult.from_array("m", vectors)
    payload = result.encode()
    assert isinstance(payload["vectors"], bytes)
    assert payload["vectors"] == vectors.astype("<f4").tobytes()
    assert (payload["dim"], payload["count"], payload["dtype"]) == (4, 3, "<f4")
    back = EmbedResult.decode(_through_msgpack(payload)).to_array()
    assert back.dtype == np.float32 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, vectors.astype(np.float32))
    back[0, 0] = 1.0  # the caller gets a writable array


def test_empty_result_round_trips() -> None:
    result = EmbedResult.from_array("m", np.zeros((0, 8), dtype=np.float32))
    assert EmbedResult.decode(_through_msgpack(result.encode())).to_array().shape == (0, 8)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ("texts", "must be a map"),
        ({"v": 1, "model": "m", "kind": "document"}, "missing keys ['texts']"),
        ({"v": 1, "model": "m", "kind": "document", "texts": [], "extra": 1}, "unknown keys ['extra']"),
        ({"v": 2, "model": "m", "kind": "document", "texts": []}, "wire version 2"),
        ({"v": 1, "model": 3, "kind": "document", "texts": []}, "model must be str"),
        ({"v": 1, "model": "m", "kind": "passage", "texts": []}, "kind must be one of"),
        ({"v": 1, "model": "m", "kind": "query", "texts": "abc"}, "texts must be list"),
        ({"v": 1, "model": "m", "kind": "query", "texts": ["a", b"b"]}, "texts[1] must be str"),
    ],
)
def test_request_decode_rejects_malformed_payloads(payload: object, complaint: str) -> None:
    with pytest.raises(MessageDecodeError) as raised:
        EmbedRequest.decode(payload)
    assert complaint in str(raised.value)


def test_request_from_task_args_wants_exactly_one_positional_request() -> None:
    request = EmbedRequest("m", "query", ("a",))
    assert EmbedRequest.from_task_args((request.encode(),), {}) == request
    with pytest.raises(MessageDecodeError, match="one positional request"):
        EmbedRequest.from_task_args((request.encode(), 1), {})
    with pytest.raises(MessageDecodeError, match="keyword arguments"):
        EmbedRequest.from_task_args((), {"request": request.encode()})


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"vectors": b"\x00" * 12}, "holds 12 bytes, expected 32"),
        ({"dtype": "<f8"}, "dtype must be '<f4'"),
        ({"dim": True}, "dim must be int"),
        ({"dim": 0, "count": 0, "vectors": b""}, "dim 0"),
        ({"vectors": [0.0] * 8}, "vectors must be bytes"),
    ],
)
def test_result_decode_rejects_malformed_payloads(changes: dict[str, object], complaint: str) -> None:
    payload = EmbedResult.from_array("m", np.ones((2, 4), dtype=np.float32)).encode() | changes
    with pytest.raises(MessageDecodeError) as raised:
        EmbedResult.decode(payload)
    assert complaint in str(raised.value)


def test_presence_and_manifest_round_trip_and_reject_garbage() -> None:
    assert WorkerPresence.decode(WorkerPresence("m", 256).encode()) == WorkerPresence("m", 256)
    manifest = JobManifest(("a", "b", "c"))
    assert JobManifest.decode(manifest.encode()) == manifest
    with pytest.raises(MessageDecodeError, match="not valid msgpack"):
        WorkerPresence.decode(b"\xc1")
    with pytest.raises(MessageDecodeError, match="task_ids"):
        JobManifest.decode(JobManifest(()).encode())


def test_queue_is_derived_from_the_model_id() -> None:
    assert queue_for_model("minishlab/potion-base-8M") == "embedq.minishlab/potion-base-8M"
    assert queue_for_model("a") != queue_for_model("b")


def test_upsert_request_round_trips_through_msgpack() -> None:
    from producer.protocol.messages import UpsertRequest

    request = UpsertRequest("m", "docs", ("a", "b"), ("one", "two"), ({"k": 1}, {}))
    packed = msgpack.unpackb(msgpack.packb(request.encode(), use_bin_type=True), raw=False)
    assert UpsertRequest.decode(packed) == request


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": ["a"]}, "must pair up"),
        ({"texts": ["one", 2]}, r"texts\[1\] must be str"),
        ({"metadata": [{}, "x"]}, r"metadata\[1\] must be a map"),
        ({"collection": 5}, "collection must be str"),
    ],
)
def test_malformed_upsert_requests_are_rejected(change: dict[str, object], message: str) -> None:
    from producer.protocol.messages import UpsertRequest

    payload = {**UpsertRequest("m", "docs", ("a", "b"), ("one", "two"), ({}, {})).encode(), **change}
    with pytest.raises(MessageDecodeError, match=message):
        UpsertRequest.decode(payload)


def test_upsert_result_rejects_negative_counts() -> None:
    from producer.protocol.messages import UpsertResult

    assert UpsertResult.decode(UpsertResult("m", "c", 3).encode()) == UpsertResult("m", "c", 3)
    with pytest.raises(MessageDecodeError, match="must not be negative"):
        UpsertResult.decode({**UpsertResult("m", "c", 3).encode(), "written": -1})


def test_sync_fields_are_optional_both_ways() -> None:
    from producer.protocol.messages import UpsertRequest, UpsertResult

    plain = UpsertRequest("m", "c", ("a",), ("text",), ({},))
    assert "skip_unchanged" not in plain.encode()  # workers of earlier versions accept it
    assert UpsertRequest.decode(plain.encode()) == plain
    syncing = UpsertRequest("m", "c", ("a",), ("text",), ({},), skip_unchanged=True)
    assert UpsertRequest.decode(syncing.encode()).skip_unchanged is True
    old_result = {"v": UpsertResult("m", "c", 3).encode()["v"], "model": "m", "collection": "c", "written": 3}
    assert UpsertResult.decode(old_result) == UpsertResult("m", "c", 3, unchanged=0)
    assert UpsertResult.decode(UpsertResult("m", "c", 1, unchanged=5).encode()).unchanged == 5
    with pytest.raises(MessageDecodeError):
        UpsertResult.decode({**old_result, "unchanged": -1})


def test_an_upsert_result_says_where_it_writes_only_when_asked_by_a_probe() -> None:
    from producer.protocol.messages import UpsertResult

    probe_answer = UpsertResult("m", "c", 0, milvus="/data/embedq.db", collection_uuid="")
    assert UpsertResult.decode(probe_answer.encode()) == probe_answer
    assert "milvus" not in UpsertResult("m", "c", 3).encode()  # what producers of earlier versions read


def test_split_and_truncation_fields_are_optional_and_checked() -> None:
    from producer.protocol.messages import UpsertRequest, UpsertResult, WorkerPresence

    split = UpsertRequest("m", "c", ("a",), ("text",), ({},), split=(256, 32))
    assert UpsertRequest.decode(split.encode()) == split
    assert "split" not in UpsertRequest("m", "c", ("a",), ("text",), ({},)).encode()
    for bad in ([256, 256], [256], [0, -1], ["256", 0]):
        with pytest.raises(MessageDecodeError, match="split"):
            UpsertRequest.decode({**split.encode(), "split": bad})
    result = UpsertResult("m", "c", 4, truncated=3, max_tokens=512, passages=0)
    assert UpsertResult.decode(result.encode()) == result
    assert set(UpsertResult("m", "c", 4).encode()) == {"v", "model", "collection", "written"}
    presence = WorkerPresence("m", 256, max_length=512)
    assert WorkerPresence.decode(presence.encode()) == presence
    assert WorkerPresence.decode(WorkerPresence("m", 256).encode()).max_length is None
