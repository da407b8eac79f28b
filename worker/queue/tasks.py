"""Thin embed tasks (decode the request, call the encoder, encode the result) and their retry policy."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import numpy as np
from celery import Celery, Task, states

from producer.celery_config import PollingRedisBackend
from producer.errors import (
    InvalidInputError,
    MessageDecodeError,
    ModelMismatchError,
    PermanentError,
    SinkUnavailableError,
    TransientError,
)
from producer.protocol.messages import EmbedRequest, EmbedResult, UpsertRequest, UpsertResult
from producer.protocol.names import TASK_FOR_KIND, TASK_UPSERT_DOCUMENTS, Kind, queue_for_model
from producer.protocol.texts import validate_texts
from producer.protocol.vectors_apart import APART_MIN_BYTES, ApartVectors
from worker.metrics.recording import encode_observed, record_milvus_upsert, record_request, token_total
from worker.milvus.content import content_hash
from worker.milvus.passage_rows import passage_id
from worker.queue.passage_upsert import PassageSink, SplittingEncoder, encode_counting, upsert_passages
from worker.queue.payloads import forget_arguments, start_task


class Encoder(Protocol):
    """What the tasks need of a loaded model (worker.encoding.encoder.StaticEncoder)."""

    model_id: str
    fingerprint: str
    """Hash of the model's files ("" when unknown); see worker.encoding.fingerprint."""

    @property
    def dim(self) -> int:
        """Length of every output vector."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 vectors of shape (len(texts), dim)."""


@dataclass(frozen=True)
class TextLimits:
    """The per-request limits a worker enforces again, whatever the producer checked."""

    max_texts: int
    max_text_chars: int


class EmbedTask(Task):  # type: ignore[misc]  # Celery ships no type hints
    """Base of every embedq task: the one place for retry policy and timing.

    Permanent errors (bad input, malformed message, wrong model) fail at once and are stored by
    task id; transient errors retry with capped exponential backoff, at most ``max_retries`` times.
    A pool process lost mid-task (killed, out of memory) counts as one retry too.
    """

    acks_late = True
    reject_on_worker_lost = True
    track_started = False  # stored by start_task, in the round trip that reads a stored request
    typing = False  # arguments are checked by EmbedRequest.decode, as a MessageDecodeError
    throws = (PermanentError, TransientError)  # expected failures: logged without a traceback
    max_retries = 5
    default_retry_delay = 1  # s before re-running a task whose pool process died
    resultrepr_maxsize = 100  # the log line shows model, dim and count, not the vector bytes
    retry_backoff_base_s: ClassVar[float] = 1.0
    retry_backoff_max_s: ClassVar[float] = 60.0

    def retry_countdown_s(self, retries: int) -> float:
        """Seconds before attempt ``retries + 1``: doubling from the base, capped, with jitter."""
        ceiling_s = min(self.retry_backoff_max_s, self.retry_backoff_base_s * 2.0**retries)
        return ceiling_s * random.uniform(0.5, 1.0)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task; turn a transient error into a delayed retry, let any other error fail it.

        The STARTED state is stored and a request stored beside its message (protocol.payloads)
        read first; a retry re-sends the reference, so the stored request stays until the task's
        outcome is stored.
        """
        try:
            return super().__call__(*start_task(self, args), **kwargs)
        except PermanentError:
            raise
        except TransientError as exc:
            raise self.retry(exc=exc, countdown=self.retry_countdown_s(self.request.retries)) from exc

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """Once the outcome is stored (success or final failure), delete a request stored beside it."""
        forget_arguments(self, tuple(args or ()), final=status in (states.SUCCESS, states.FAILURE))


class Sink(PassageSink, Protocol):
    """What the upsert task needs of a Milvus collection (worker.milvus.sink.MilvusSink).

    The writes, the stored-document lookup and the deletes are the passage path's (PassageSink).
    """

    def stored_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """Return the content hash recorded for each of ``ids`` that exists."""

    def collection_uuid(self) -> str | None:
        """Return the collection's identity as it is now (None: it does not exist); never create it."""

    @property
    def location(self) -> str:
        """Where the sink writes, as shown to users (no credentials)."""

    def close(self) -> None:
        """Release the connection."""


SinkOpener = Callable[[str, str, int], Sink]
"""Opens the sink of (collection, model id, dim); called in the pool process, after the fork."""


class CollectionSinks:
    """The open sinks of one pool process, by collection; a sink that failed is reopened next time."""

    def __init__(self, opener: SinkOpener) -> None:
        self._opener = opener
        self._open: dict[str, Sink] = {}

    def get(self, collection: str, model_id: str, dim: int) -> Sink:
        """Return the open sink of ``collection``, opening it (and creating the collection) on first use."""
        sink = self._open.get(collection)
        if sink is None:
            sink = self._open[collection] = self._opener(collection, model_id, dim)
        return sink

    def discard(self, collection: str) -> None:
        """Drop a sink whose connection failed, so the retry reconnects."""
        sink = self._open.pop(collection, None)
        if sink is not None:
            # Closing a broken connection may raise anything from the client library; the failure
            # being handled is the one that matters.
            with contextlib.suppress(Exception):
                sink.close()


def _check_model(encoder: Encoder, requested: str) -> None:
    if requested != encoder.model_id:
        raise ModelMismatchError(
            f"request for model {requested!r} reached a worker serving {encoder.model_id!r} "
            f"(queue {queue_for_model(encoder.model_id)}): send it to queue "
            f"{queue_for_model(requested)} and start a worker for that model"
        )


check_model = _check_model


def _encode_request(encoder: Encoder, request: EmbedRequest, limits: TextLimits) -> tuple[np.ndarray, Any]:
    _check_model(encoder, request.model)
    texts = validate_texts(request.texts, max_texts=limits.max_texts, max_text_chars=limits.max_text_chars)
    vectors, tokens = encode_observed(encoder, encoder.model_id, texts)
    record_request(encoder.model_id, request.kind, "ok", len(texts), token_total(tokens))
    return vectors, tokens


def embed_request(encoder: Encoder, request: EmbedRequest, limits: TextLimits) -> EmbedResult:
    """Encode one request with the worker's model, refusing requests meant for another model."""
    vectors, tokens = _encode_request(encoder, request, limits)
    return EmbedResult.from_array(encoder.model_id, vectors, None if tokens is None else tokens.tolist())


def embed_apart(encoder: Encoder, request: EmbedRequest, limits: TextLimits) -> dict[str, Any]:
    """Encode one request into a task result whose vectors the result backend stores apart.

    Vectors under :data:`APART_MIN_BYTES` stay in the record (see protocol.vectors_apart).
    """
    vectors, tokens = _encode_request(encoder, request, limits)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, dim), got shape {vectors.shape}")
    apart = ApartVectors(vectors)
    counts = None if tokens is None else tokens.tolist()
    count, dim = (int(size) for size in vectors.shape)
    if apart.nbytes < APART_MIN_BYTES:
        return EmbedResult.encoded(encoder.model_id, dim, count, apart.raw().tobytes(), counts)
    return EmbedResult.encoded(encoder.model_id, dim, count, apart, counts)


def _stores_apart(task: Task) -> bool:
    """Whether this run's result goes through embedq's Redis backend (not eager), which stores apart."""
    return isinstance(task.backend, PollingRedisBackend) and not task.request.is_eager


def upsert_request(
    encoder: Encoder, sinks: CollectionSinks, request: UpsertRequest, limits: TextLimits
) -> UpsertResult:
    """Encode the documents and upsert them; the result counts only rows Milvus acknowledged.

    With ``request.skip_unchanged``, rows whose recorded content hash matches are left alone.
    """
    _check_model(encoder, request.model)
    if not request.ids:
        return _describe_target(encoder, sinks, request.collection)
    texts = validate_texts(request.texts, max_texts=limits.max_texts, max_text_chars=limits.max_text_chars)
    if request.split is not None:
        return _upsert_split(encoder, sinks, request, texts)
    hashes = [content_hash(encoder.model_id, t, m) for t, m in zip(texts, request.metadata, strict=True)]
    sink = sinks.get(request.collection, encoder.model_id, encoder.dim)
    tokens = None
    truncated = 0
    started = time.perf_counter()
    try:
        rows = list(range(len(texts)))
        if request.skip_unchanged:
            stored = sink.stored_hashes(request.ids)
            rows = [row for row in rows if stored.get(request.ids[row]) != hashes[row]]
        written = 0
        if rows and _holds_passages(sink):
            # Documents stored as passages before: their passages go, so each is stored one way only.
            written_ids = [request.ids[row] for row in rows]
            stored_as = sink.stored_documents(written_ids)
            sink.delete_rows([passage_id(d, k) for d, how in stored_as.items() for k in range(how.passages)])
        if rows:
            vectors, tokens, truncated = encode_counting(
                encoder, encoder.model_id, [texts[row] for row in rows]
            )
            started = time.perf_counter()
            written = sink.upsert(
                [request.ids[row] for row in rows],
                [texts[row] for row in rows],
                [request.metadata[row] for row in rows],
                vectors,
                hashes=[hashes[row] for row in rows],
            )
    except SinkUnavailableError:
        sinks.discard(request.collection)
        raise
    record_milvus_upsert(request.collection, written, time.perf_counter() - started)
    record_request(encoder.model_id, "upsert", "ok", len(texts), token_total(tokens))
    unchanged = len(set(request.ids)) - len({request.ids[row] for row in rows})
    milvus, collection_uuid = _written_to(sink)
    return UpsertResult(
        model=encoder.model_id,
        collection=request.collection,
        written=written,
        unchanged=unchanged,
        truncated=truncated,
        max_tokens=getattr(encoder, "max_length", None) if truncated else None,
        milvus=milvus,
        collection_uuid=collection_uuid,
    )


def _written_to(sink: Sink) -> tuple[str | None, str | None]:
    """Where the rows just written went (the Milvus location, the collection's identity), as known already.

    No round trip: the open sink knows both once it wrote. A backfill records them, so it need not
    ask a worker afterwards (a probe that opened a cold sink cost seconds on Milvus Lite).
    """
    location = getattr(sink, "location", None)
    uuid = getattr(getattr(sink, "record", None), "collection_uuid", None)
    if isinstance(location, str) and isinstance(uuid, str) and uuid:
        return location, uuid
    return None, None


def _holds_passages(sink: Sink) -> bool:
    """Whether the sink's collection holds passages (a sink without the notion, a test double: no)."""
    check = getattr(sink, "has_passages", None)
    return bool(check()) if callable(check) else False


def _upsert_split(
    encoder: Encoder, sinks: CollectionSinks, request: UpsertRequest, texts: Sequence[str]
) -> UpsertResult:
    """Store each document as passages (``worker.queue.passage_upsert``)."""
    if not callable(getattr(encoder, "split", None)):
        raise InvalidInputError(f"the worker's encoder for {encoder.model_id!r} cannot split documents")
    sink = sinks.get(request.collection, encoder.model_id, encoder.dim)
    started = time.perf_counter()
    try:
        done = upsert_passages(cast(SplittingEncoder, encoder), sink, request, texts)
    except SinkUnavailableError:
        sinks.discard(request.collection)
        raise
    record_milvus_upsert(request.collection, done.passages_written, time.perf_counter() - started)
    record_request(encoder.model_id, "upsert", "ok", len(texts), token_total(done.tokens))
    return UpsertResult(
        model=encoder.model_id,
        collection=request.collection,
        written=done.documents_written,
        unchanged=done.documents_unchanged,
        passages=done.passages_written,
    )


def _describe_target(encoder: Encoder, sinks: CollectionSinks, collection: str) -> UpsertResult:
    """Answer a request with no documents: where this worker writes and which collection is there now.

    A backfill asks before skipping the chunks it saved as done, so that progress saved against a
    collection since dropped (or against another Milvus) is not taken for rows that exist.
    """
    sink = sinks.get(collection, encoder.model_id, encoder.dim)
    try:
        uuid = sink.collection_uuid()
    except SinkUnavailableError:
        sinks.discard(collection)
        raise
    return UpsertResult(encoder.model_id, collection, 0, milvus=sink.location, collection_uuid=uuid or "")


def _task_body(kind: Kind, encoder: Encoder, limits: TextLimits) -> Callable[..., dict[str, Any]]:
    def run(self: EmbedTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
        request = EmbedRequest.from_task_args(args, kwargs)
        if request.kind != kind:
            raise MessageDecodeError(f"a {request.kind} request was sent to the {kind} task {self.name}")
        if request.vectors_apart and _stores_apart(self):
            return embed_apart(encoder, request, limits)
        return embed_request(encoder, request, limits).encode()

    run.__name__ = f"embed_{kind}s"
    run.__doc__ = f"Embed a batch of {kind}s with the worker's model."
    return run


def _upsert_body(
    encoder: Encoder, sinks: CollectionSinks, limits: TextLimits
) -> Callable[..., dict[str, Any]]:
    def upsert_documents(self: EmbedTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Embed documents with the worker's model and upsert them into a Milvus collection."""
        request = UpsertRequest.from_task_args(args, kwargs)
        return upsert_request(encoder, sinks, request, limits).encode()

    return upsert_documents


def register_tasks(
    app: Celery,
    encoder: Encoder,
    limits: TextLimits,
    sinks: CollectionSinks | None = None,
    *,
    retry_backoff_s: float = EmbedTask.retry_backoff_base_s,
) -> None:
    """Register the embed tasks (and, given ``sinks``, the upsert task) bound to ``encoder``.

    ``retry_backoff_s``: the first retry's delay after a transient error (EMBEDQ_RETRY_BACKOFF_S).
    """
    options = {"base": EmbedTask, "bind": True, "shared": False, "retry_backoff_base_s": retry_backoff_s}
    for kind, name in TASK_FOR_KIND.items():
        app.task(name=name, **options)(_task_body(kind, encoder, limits))
    if sinks is not None:
        app.task(name=TASK_UPSERT_DOCUMENTS, **options)(_upsert_body(encoder, sinks, limits))
