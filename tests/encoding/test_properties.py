"""Property tests: any input is accepted (and encodes to the right shape) or refused with a typed error.

Covers the producer's checks (validate_texts, EmbeddingClient), the wire decoders and the worker's
task entry. Hypothesis draws arbitrary objects, unicode with lone surrogates, and valid messages
with one field broken; the only exceptions allowed are InvalidInputError and MessageDecodeError
(ModelMismatchError for a request naming another model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fakeredis
import msgpack
import numpy as np
import pytest
from celery import Celery
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kombu.serialization import dumps, loads, prepare_accept_content

from producer import EmbeddingClient
from producer.errors import InvalidInputError, MessageDecodeError, ModelMismatchError
from producer.protocol.messages import (
    EmbedRequest,
    EmbedResult,
    JobManifest,
    UpsertRequest,
    UpsertResult,
    WorkerPresence,
)
from producer.protocol.names import (
    BUNDLED_MODEL_ID,
    TASK_EMBED_DOCUMENTS,
    TASK_EMBED_QUERIES,
    TASK_UPSERT_DOCUMENTS,
    queue_for_model,
)
from producer.protocol.texts import validate_texts
from tests.support.fakes import sent_tasks
from worker.encoding.encoder import StaticEncoder
from worker.queue.tasks import CollectionSinks, TextLimits, register_tasks

pytestmark = pytest.mark.timeout(60)

MAX_TEXTS, MAX_TEXT_CHARS = 8, 40
LIMITS = TextLimits(MAX_TEXTS, MAX_TEXT_CHARS)
EXAMPLES = settings(max_examples=150, deadline=None)
# Hypothesis leaves lone surrogates out of text() unless asked: ask, one character in ten.
CHARACTERS = st.one_of(st.characters(), st.characters(categories=["Cs"])) | st.sampled_from("\x00 .\n")
TEXT = st.text(CHARACTERS, max_size=MAX_TEXT_CHARS + 5)
# What msgpack can carry (what a hostile producer can put in a message), nested.
WIRE_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
WIRE_VALUE = st.recursive(
    WIRE_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ITEM = st.one_of(
    TEXT, st.none(), st.binary(max_size=8), st.integers(), st.floats(), st.lists(TEXT, max_size=2)
)
TEXTS_LIKE = st.one_of(
    st.lists(TEXT, max_size=MAX_TEXTS + 2),
    st.lists(TEXT, max_size=MAX_TEXTS + 2).map(tuple),
    st.lists(ITEM, max_size=MAX_TEXTS + 2),
    TEXT,
    st.binary(max_size=8),
    st.none(),
    st.integers(),
    st.dictionaries(st.text(max_size=4), TEXT, max_size=3),
    st.sets(st.text(max_size=4), max_size=3),
    st.builds(iter, st.lists(TEXT, max_size=3)),
)


def _is_scalar_unicode(text: str) -> bool:
    """Whether ``text`` holds only Unicode scalar values (no surrogate code points)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encodable(texts: object) -> bool:
    """What the encoder takes: a list or tuple of surrogate-free str, of any length."""
    return isinstance(texts, list | tuple) and all(
        isinstance(t, str) and _is_scalar_unicode(t) for t in texts
    )


def _acceptable(texts: object, max_texts: int | None) -> bool:
    """The oracle: a list or tuple of surrogate-free str within the limits."""
    return (
        isinstance(texts, list | tuple)
        and (max_texts is None or len(texts) <= max_texts)
        and all(isinstance(t, str) and len(t) <= MAX_TEXT_CHARS and _is_scalar_unicode(t) for t in texts)
    )


def _through_msgpack(payload: object) -> object:
    """Serialize and parse as Celery does for task arguments and results."""
    content_type, encoding, body = dumps(payload, serializer="msgpack")
    return loads(body, content_type, encoding, accept=prepare_accept_content(["msgpack"]))


@pytest.fixture(scope="module")
def encoder() -> StaticEncoder:
    """The bundled model, as a worker loads it."""
    return StaticEncoder.from_pretrained(None)


def _check_vectors(vectors: np.ndarray, count: int, encoder: StaticEncoder) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (count, encoder.dim)
    assert np.isfinite(vectors).all()
    norms = np.linalg.norm(vectors, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-3) | (norms == 0))  # normalised, or no known token


@EXAMPLES
@given(texts=TEXTS_LIKE, max_texts=st.one_of(st.none(), st.integers(0, MAX_TEXTS)))
def test_validation_accepts_exactly_lists_of_valid_text(texts: object, max_texts: int | None) -> None:
    try:
        checked = validate_texts(texts, max_texts=max_texts, max_text_chars=MAX_TEXT_CHARS)
    except InvalidInputError as exc:
        event("refused")
        assert not _acceptable(texts, max_texts)
        assert str(exc)  # names the problem
        return
    event("accepted")
    assert _acceptable(texts, max_texts)
    assert checked is texts


@EXAMPLES
@given(texts=TEXTS_LIKE)
def test_the_encoder_returns_one_unit_vector_per_text_or_a_typed_error(
    encoder: StaticEncoder, texts: object
) -> None:
    try:
        vectors = encoder.encode(texts)  # type: ignore[arg-type]
    except InvalidInputError:
        event("refused")
        assert not _encodable(texts)
        return
    event("encoded")
    assert isinstance(texts, list | tuple) and _encodable(texts)
    _check_vectors(vectors, len(texts), encoder)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=TEXTS_LIKE,
    max_texts_per_task=st.integers(1, 4),
    max_chars_per_task=st.integers(1, 80),
    kind=st.sampled_from(["document", "query"]),
)
def test_the_client_enqueues_every_accepted_text_once_in_order(
    fake_app: Celery,
    fake_redis: fakeredis.FakeRedis,
    texts: object,
    max_texts_per_task: int,
    max_chars_per_task: int,
    kind: str,
) -> None:
    """Accepted input arrives on the queue whole and in order; refused input leaves the queue untouched."""
    queue = queue_for_model(BUNDLED_MODEL_ID)
    fake_redis.flushall()
    client = EmbeddingClient(
        app=fake_app,
        max_texts_per_task=max_texts_per_task,
        max_chars_per_task=max_chars_per_task,
        max_text_chars=MAX_TEXT_CHARS,
        max_texts_per_job=MAX_TEXTS,
        max_queue_depth=None,
        worker_wait_s=None,
        batch_wait_ms=None,  # one task per request: the wire read below (batches: test_batching.py)
    )
    submit = client.embed_documents if kind == "document" else client.embed_queries
    try:
        job = submit(texts)  # type: ignore[arg-type]
    except InvalidInputError:
        event("refused")
        assert not _acceptable(texts, MAX_TEXTS) or not texts
        assert fake_redis.llen(queue) == 0
        return
    assert _acceptable(texts, MAX_TEXTS) and len(texts) > 0  # type: ignore[arg-type]
    sent = sent_tasks(fake_redis, queue)
    event(f"sent as {min(len(sent), 3)}+ tasks" if len(sent) >= 3 else f"sent as {len(sent)} task(s)")
    assert [task.task_id for task in sent] == list(job.task_ids)
    assert [text for task in sent for text in task.request.texts] == list(texts)  # type: ignore[call-overload]
    for task in sent:
        assert task.name == (TASK_EMBED_DOCUMENTS if kind == "document" else TASK_EMBED_QUERIES)
        assert task.content_type == "application/x-msgpack"
        assert 1 <= len(task.request.texts) <= max_texts_per_task
        assert len(task.request.texts) == 1 or sum(map(len, task.request.texts)) <= max_chars_per_task
    assert client.job(job.id).task_ids == job.task_ids  # another process finds every part


# Around the worker's limits (LIMITS), and now and then for another model.
TEXTS = st.lists(st.text(max_size=MAX_TEXT_CHARS + 2), max_size=MAX_TEXTS + 1)
MODELS = st.sampled_from([BUNDLED_MODEL_ID] * 5 + ["org/other-model"])
EMBED_REQUESTS = st.builds(
    lambda model, kind, items: EmbedRequest(model, kind, tuple(items)).encode(),
    MODELS,
    st.sampled_from(["document", "query"]),
    TEXTS,
)
UPSERT_REQUESTS = st.builds(
    lambda model, items, ids: UpsertRequest(
        model,
        "docs",
        tuple(ids[i % len(ids)] for i in range(len(items))),  # repeated ids: the last text wins
        tuple(items),
        tuple({"n": i} for i in range(len(items))),
    ).encode(),
    MODELS,
    TEXTS,
    st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=4),
)
RESULTS = st.builds(
    lambda count, dim: EmbedResult.from_array("m", np.ones((count, dim), dtype=np.float32)).encode(),
    st.integers(0, 3),
    st.integers(1, 4),
)
UPSERT_RESULTS = st.integers(0, 10).map(lambda n: UpsertResult("m", "docs", n).encode())
VALID_PAYLOADS = st.one_of(EMBED_REQUESTS, UPSERT_REQUESTS, RESULTS, UPSERT_RESULTS)


def _broken(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[object]:
    """A valid payload with one key removed, added or given an arbitrary value; or anything at all."""

    @st.composite
    def broken(draw: st.DrawFn) -> object:
        how = draw(st.sampled_from(["drop", "add", "replace", "anything"]))
        if how == "anything":
            return draw(WIRE_VALUE)
        payload = dict(draw(valid))
        key = draw(st.sampled_from(sorted(payload)))
        if how == "drop":
            del payload[key]
        elif how == "add":
            payload[draw(st.text(max_size=6))] = draw(WIRE_VALUE)
        else:
            payload[key] = draw(WIRE_VALUE)
        return payload

    return broken()


DECODERS: list[Callable[[object], Any]] = [
    EmbedRequest.decode,
    EmbedResult.decode,
    UpsertRequest.decode,
    UpsertResult.decode,
]


@EXAMPLES
@given(payload=st.one_of(VALID_PAYLOADS, _broken(VALID_PAYLOADS)))
def test_every_decoder_returns_a_message_or_a_decode_error(payload: object) -> None:
    wire = _through_msgpack(payload)
    for decode in DECODERS:
        try:
            message = decode(wire)
        except MessageDecodeError as exc:
            assert str(exc)
            continue
        event(f"decoded as {type(message).__name__}")
        assert decode(_through_msgpack(message.encode())) == message  # what decodes re-encodes the same


@EXAMPLES
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda model, dim: WorkerPresence(model, dim).encode(), st.text(max_size=8), st.integers(1, 9)
        ),
        st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3).map(
            lambda ids: JobManifest(tuple(ids)).encode()
        ),
        st.one_of(
            _broken(st.builds(lambda dim: {"v": 1, "model": "m", "dim": dim}, st.integers(-1, 9))),
            _broken(st.just({"v": 1, "task_ids": ["a", "b"]})),
            WIRE_VALUE,
        ).map(lambda value: msgpack.packb(value, use_bin_type=True)),
    )
)
def test_presence_and_manifest_records_decode_or_raise_a_decode_error(raw: bytes) -> None:
    for decode in (WorkerPresence.decode, JobManifest.decode):
        try:
            record = decode(raw)
        except MessageDecodeError:
            continue
        event(f"decoded as {type(record).__name__}")
        assert decode(record.encode()) == record


class _RecordingSink:
    """Keeps upserted rows in memory: the property is about decoding, not about Milvus."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, np.ndarray]] = {}

    def upsert(
        self,
        ids: Sequence[str],
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any]],
        vectors: np.ndarray,
        hashes: Sequence[str] | None = None,
    ) -> int:
        for doc_id, text, vector in zip(ids, texts, vectors, strict=True):
            self.rows[doc_id] = (text, vector)
        return len(set(ids))

    def collection_uuid(self) -> str | None:
        """The collection exists once a row was written (an upsert of no rows asks this)."""
        return "in-memory" if self.rows else None

    location = "memory"

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture(scope="module")
def task_app(encoder: StaticEncoder) -> tuple[Celery, dict[str, _RecordingSink]]:
    """An eager app with the real tasks bound to the bundled model, and the sinks it opened by collection."""
    sinks: dict[str, _RecordingSink] = {}

    def open_sink(collection: str, model_id: str, dim: int) -> _RecordingSink:
        return sinks.setdefault(collection, _RecordingSink())

    app = Celery("embedq-test-properties", set_as_current=False)
    app.conf.update(task_always_eager=True, task_store_eager_result=False)
    register_tasks(app, encoder, LIMITS, CollectionSinks(open_sink))
    return app, sinks


def _task_arguments(
    valid: st.SearchStrategy[dict[str, Any]],
) -> st.SearchStrategy[tuple[list[Any], dict[str, Any]]]:
    """Mostly one request (valid, or broken in one place), sometimes any arguments at all."""
    one_request = st.one_of(valid, _broken(valid), VALID_PAYLOADS).map(lambda request: [request])
    any_args = st.lists(WIRE_VALUE, max_size=3)
    any_kwargs = st.dictionaries(st.text(min_size=1, max_size=6), WIRE_VALUE, max_size=2)
    return st.one_of(
        st.tuples(valid.map(lambda request: [request]), st.just({})),
        st.tuples(one_request, st.just({})),
        st.tuples(one_request | any_args, any_kwargs),
    )


TASK_ARGUMENTS = {
    TASK_EMBED_DOCUMENTS: _task_arguments(EMBED_REQUESTS.map(lambda r: {**r, "kind": "document"})),
    TASK_EMBED_QUERIES: _task_arguments(EMBED_REQUESTS.map(lambda r: {**r, "kind": "query"})),
    TASK_UPSERT_DOCUMENTS: _task_arguments(UPSERT_REQUESTS),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(TASK_ARGUMENTS)))
def test_a_task_returns_right_shaped_vectors_or_fails_with_a_typed_error(
    task_app: tuple[Celery, dict[str, _RecordingSink]], encoder: StaticEncoder, data: st.DataObject, name: str
) -> None:
    args, kwargs = data.draw(TASK_ARGUMENTS[name])
    app, sinks = task_app
    wire_args, wire_kwargs = _through_msgpack(args), _through_msgpack(kwargs)
    outcome = app.tasks[name].apply(args=wire_args, kwargs=wire_kwargs)
    event(f"{name}: {'failed with ' + type(outcome.result).__name__ if outcome.failed() else 'done'}")
    if outcome.failed():
        assert type(outcome.result) in (MessageDecodeError, InvalidInputError, ModelMismatchError), repr(
            outcome.result
        )
        return
    if name == TASK_UPSERT_DOCUMENTS:
        request = UpsertRequest.decode(wire_args[0])  # type: ignore[index]
        assert UpsertResult.decode(outcome.result).written == len(set(request.ids))
        stored = sinks[request.collection].rows
        last_text = dict(zip(request.ids, request.texts, strict=True))
        for doc_id, text in last_text.items():
            assert stored[doc_id][0] == text
            assert np.array_equal(stored[doc_id][1], encoder.encode([text])[0])
        return
    request_texts = EmbedRequest.decode(wire_args[0]).texts  # type: ignore[index]
    vectors = EmbedResult.decode(outcome.result).to_array()
    _check_vectors(vectors, len(request_texts), encoder)
    assert np.array_equal(vectors, encoder.encode(request_texts))
