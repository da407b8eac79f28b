"""The batch task: several small requests encoded in one call, each answered under its own id.

Each item is checked on its own (model, texts, deadline): a bad item fails alone, an item whose
caller's deadline passed is dropped without being encoded. The valid texts of all items go
through the encoder in one call, and every item's result (vectors or error) is stored under its
own id, in one pipeline with the notice to the client process. The message is acknowledged only
after that (``acks_late``); a pool process killed mid-batch has the whole batch run again, which
stores the same results under the same ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producer.celery_config import backend_url, broker_client
from producer.errors import (
    BrokerUnavailableError,
    DeadlineExceededError,
    EmbedqError,
    PermanentError,
    TaskFailedError,
    TransientError,
)
from producer.protocol.batches import TASK_EMBED_BATCH, BatchItem, BatchRequest, encode_notice
from producer.protocol.messages import EmbedResult
from producer.protocol.names import VECTOR_DTYPE
from producer.protocol.texts import validate_texts
from worker.metrics.recording import encode_observed, record_request, record_requests
from worker.queue.tasks import EmbedTask, Encoder, TextLimits, check_model

QueueDepth = Callable[[], int | None]


@dataclass(frozen=True)
class ItemOutcome:
    """What one item of a batch ends with: an encoded EmbedResult map, or the error to store."""

    item_id: str
    result: dict[str, Any] | None = None
    error: EmbedqError | None = None


def _expired(item: BatchItem, now_s: float, queue: str, depth: QueueDepth) -> DeadlineExceededError:
    late_ms = (now_s - (item.deadline_s or now_s)) * 1000
    held = depth()
    held_text = "an unknown number of" if held is None else str(held)
    return DeadlineExceededError(
        f"request {item.id} was dropped unencoded: its deadline had passed {late_ms:.0f} ms before a "
        f"worker took it from queue {queue}, which still held {held_text} tasks; start more workers, "
        "send less, or give the request a longer timeout"
    )


def run_batch(
    encoder: Encoder, batch: BatchRequest, limits: TextLimits, queue: str, depth: QueueDepth
) -> list[ItemOutcome]:
    """Check each item, encode the valid ones in one call, and return every item's outcome in order."""
    now_s = time.time()
    outcomes: dict[str, ItemOutcome] = {}
    accepted: list[tuple[BatchItem, Sequence[str]]] = []
    for item in batch.items:
        if item.deadline_s is not None and now_s > item.deadline_s:
            outcomes[item.id] = ItemOutcome(item.id, error=_expired(item, now_s, queue, depth))
            record_request(encoder.model_id, item.kind, DeadlineExceededError.__name__, request_id=item.id)
            continue
        try:
            check_model(encoder, batch.model)
            texts = validate_texts(
                item.texts, max_texts=limits.max_texts, max_text_chars=limits.max_text_chars
            )
        except PermanentError as exc:
            outcomes[item.id] = ItemOutcome(item.id, error=exc)
            record_request(encoder.model_id, item.kind, type(exc).__name__, request_id=item.id)
            continue
        accepted.append((item, texts))
    all_texts = [text for _, texts in accepted for text in texts]
    vectors, tokens = (
        encode_observed(encoder, encoder.model_id, all_texts)
        if all_texts
        else (np.zeros((0, encoder.dim), np.float32), None)
    )
    # Converted once for the whole batch, then sliced per item (a numpy call per item costs more).
    dim = int(vectors.shape[1])
    raw = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE).tobytes()
    counts: list[int] | None = None if tokens is None else tokens.tolist()
    row_bytes = dim * np.dtype(VECTOR_DTYPE).itemsize
    start = 0
    done: dict[str, tuple[list[str], list[int]]] = {}  # kind: (request ids, [texts, tokens])
    for item, texts in accepted:
        item_id, end = item.id, start + len(texts)
        part_tokens = None if counts is None else counts[start:end]
        ids, totals = done.setdefault(item.kind, ([], [0, 0]))
        ids.append(item_id)
        totals[0] += len(texts)
        totals[1] += 0 if part_tokens is None else sum(part_tokens)
        result = EmbedResult.encoded(
            encoder.model_id, dim, end - start, raw[start * row_bytes : end * row_bytes], part_tokens
        )
        start = end
        outcomes[item_id] = ItemOutcome(item_id, result=result)
    for kind, (ids, (text_total, token_total_)) in done.items():
        record_requests(encoder.model_id, kind, ids, text_total, token_total_)
    return [outcomes[item.id] for item in batch.items]


def store_outcomes(app: Celery, outcomes: list[ItemOutcome], reply_to: str | None) -> None:
    """Store each outcome under its id as Celery would (readable by id), then notify ``reply_to``."""
    backend = app.backend
    stored: list[tuple[str, bytes]] = []
    # Celery's record of a result: the same for every item of the batch but its result and id
    # (built once per state: its date and task lookups cost more than encoding the vectors).
    metas: dict[str, dict[str, Any]] = {}
    try:
        pipe = backend.client.pipeline(transaction=False)
        for outcome in outcomes:
            if outcome.error is None:
                state, value, expires = "SUCCESS", outcome.result, backend.expires
            else:
                state, value = "FAILURE", backend.prepare_exception(outcome.error)
                expires = backend.failure_expires
            shared = metas.get(state)
            if shared is None:
                shared = metas[state] = backend._get_result_meta(None, state, None, None)
            meta = {**shared, "result": value, "task_id": outcome.item_id}
            raw = backend.encode(meta)
            key = backend.get_key_for_task(outcome.item_id)
            # The raw command: redis-py's ``set()`` checks its dozen options on every call, a
            # measurable share of a pool process answering thousands of queries a second.
            if expires:
                pipe.execute_command("SET", key, raw, "EX", int(expires))
            else:
                pipe.execute_command("SET", key, raw)
            stored.append((outcome.item_id, raw))
        if reply_to is not None:
            pipe.publish(reply_to, encode_notice(stored))
        pipe.execute()
    except (RedisError, OperationalError, OSError) as exc:
        raise BrokerUnavailableError(
            f"could not store batch results in {backend_url(app)}: {exc}; the batch will be retried"
        ) from exc


def _queue_depth(app: Celery, queue: str) -> int | None:
    try:
        with broker_client(app) as client:
            return int(client.llen(queue))
    except TransientError:
        return None


class BatchTask(EmbedTask):
    """The batch task's base: a batch that fails as a whole fails each of its requests by id."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Store ``exc`` under every request id of the batch, so no caller waits for its timeout."""
        try:
            batch = BatchRequest.from_task_args(tuple(args), kwargs)
        except PermanentError:
            return  # not a batch: its ids are unknown (the failure is stored under the task id)
        error = exc if isinstance(exc, EmbedqError) else TaskFailedError(f"{type(exc).__name__}: {exc}")
        try:
            store_outcomes(
                self.app, [ItemOutcome(item.id, error=error) for item in batch.items], batch.reply_to
            )
        except BrokerUnavailableError:
            return  # the callers' own timeouts end their wait


def register_batch_task(
    app: Celery,
    encoder: Encoder,
    limits: TextLimits,
    *,
    retry_backoff_s: float = EmbedTask.retry_backoff_base_s,
) -> None:
    """Register the batch task bound to ``encoder`` (its message is acked after every result is stored)."""

    def embed_batch(self: EmbedTask, *args: Any, **kwargs: Any) -> int:
        """Embed several small requests in one encode; store each result under its own id."""
        batch = BatchRequest.from_task_args(args, kwargs)
        queue = str((self.request.delivery_info or {}).get("routing_key") or "")
        outcomes = run_batch(encoder, batch, limits, queue, lambda: _queue_depth(app, queue))
        store_outcomes(app, outcomes, batch.reply_to)
        return len(outcomes)

    app.task(
        base=BatchTask,
        bind=True,
        name=TASK_EMBED_BATCH,
        shared=False,
        ignore_result=True,
        retry_backoff_base_s=retry_backoff_s,
    )(embed_batch)
