"""The counting API the task code calls, and the Celery signal hooks that count task outcomes.

Plain functions, so a task carrying several sub-requests calls them once per sub-request:
:func:`record_request` (one finished request), :func:`observe_encode` (one encoder call),
:func:`observe_queue_wait`, :func:`record_milvus_upsert`. They cost one attribute read when
metrics are off. Each also adds to the running task's summary, which the JSON log line of the
task shows (task id, model, counts and durations; never texts or vectors).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from celery import signals

from producer.protocol.batches import TASK_EMBED_BATCH
from producer.protocol.names import SENT_AT_HEADER, TASK_FOR_KIND, TASK_UPSERT_DOCUMENTS
from worker.metrics.definitions import WorkerMetrics

logger = logging.getLogger("embedq.tasks")
_KIND_OF_TASK: dict[str, str] = {name: kind for kind, name in TASK_FOR_KIND.items()}
_KIND_OF_TASK[TASK_UPSERT_DOCUMENTS] = "upsert"
_KIND_OF_TASK[TASK_EMBED_BATCH] = "batch"  # small requests of both kinds, each counted by its own kind


@dataclass
class TaskSummary:
    """What one task run did, for its JSON log line."""

    model: str = ""
    kind: str = ""
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    encode_s: float = 0.0
    queue_wait_s: float | None = None
    milvus_rows: int = 0
    milvus_upsert_s: float = 0.0
    outcomes: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)  # a batch task's requests, in outcome order


@dataclass
class _State:
    metrics: WorkerMetrics | None = None
    model_id: str = ""
    log_tasks: bool = False
    summary: TaskSummary = field(default_factory=TaskSummary)
    # Labelled children by (metric, label values): prometheus_client's labels() is the costliest step.
    children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)


_state = _State()


def enable_recording(metrics: WorkerMetrics | None, model_id: str, *, log_tasks: bool) -> None:
    """Count into ``metrics`` (None: count nothing) and log one summary line per task if ``log_tasks``.

    Called in the worker's parent before the pool forks; the pool processes inherit it.
    """
    _state.metrics = metrics
    _state.children = {}
    _state.model_id = model_id
    _state.log_tasks = log_tasks
    _connect_signals()


def disable_recording() -> None:
    """Stop counting and logging task summaries (the signal hooks stay connected and do nothing)."""
    _state.metrics = None
    _state.log_tasks = False


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), labels)
    child = _state.children.get(key)
    if child is None:
        child = _state.children[key] = metric.labels(*labels)
    return child


def record_request(
    model: str, kind: str, outcome: str, texts: int = 0, tokens: int = 0, request_id: str | None = None
) -> None:
    """Count one finished request; ``outcome`` is ``ok`` or the embedq error class name.

    ``texts`` and ``tokens`` are added to the totals for successful requests only; ``request_id``
    (a request inside a batch task) is listed in the task's log line.
    """
    summary = _state.summary
    summary.model = model
    summary.requests += 1
    summary.outcomes.append(outcome)
    if request_id is None:
        summary.kind = kind
    else:  # one of a batch task's requests: the task's kind stays "batch"
        summary.request_ids.append(request_id)
    metrics = _state.metrics
    if outcome == "ok":
        summary.texts += texts
        summary.tokens += tokens
    if metrics is None:
        return
    _child(metrics.requests, model, kind, outcome).inc()
    if outcome == "ok":
        _child(metrics.texts, model, kind).inc(texts)
        _child(metrics.tokens, model).inc(tokens)


def record_requests(model: str, kind: str, request_ids: list[str], texts: int, tokens: int) -> None:
    """Count the successful requests of one batch task at once: three metric writes, not three per request.

    The same counts as :func:`record_request` called per request with outcome ``ok``; in
    multiprocess mode each write locks and updates a shared file, so a batch of 90 requests
    paid 270 of them.
    """
    if not request_ids:
        return
    summary = _state.summary
    summary.model = model
    summary.requests += len(request_ids)
    summary.outcomes.extend(["ok"] * len(request_ids))
    summary.request_ids.extend(request_ids)
    summary.texts += texts
    summary.tokens += tokens
    metrics = _state.metrics
    if metrics is None:
        return
    _child(metrics.requests, model, kind, "ok").inc(len(request_ids))
    _child(metrics.texts, model, kind).inc(texts)
    _child(metrics.tokens, model).inc(tokens)


def observe_encode(model: str, seconds: float, batch_texts: int) -> None:
    """Record one encoder call of ``batch_texts`` texts that took ``seconds``."""
    _state.summary.encode_s += seconds
    metrics = _state.metrics
    if metrics is not None:
        _child(metrics.encode_seconds, model).observe(seconds)
        _child(metrics.batch_texts, model).observe(batch_texts)


def observe_queue_wait(model: str, queue: str, seconds: float) -> None:
    """Record the time a request spent queued, from enqueue to the start of its first run."""
    _state.summary.queue_wait_s = seconds
    metrics = _state.metrics
    if metrics is not None:
        _child(metrics.queue_wait_seconds, model, queue).observe(seconds)


def record_milvus_upsert(collection: str, rows: int, seconds: float) -> None:
    """Record one successful upsert call of ``rows`` acknowledged rows."""
    _state.summary.milvus_rows += rows
    _state.summary.milvus_upsert_s += seconds
    metrics = _state.metrics
    if metrics is not None:
        _child(metrics.milvus_rows_written, collection).inc(rows)
        _child(metrics.milvus_upsert_seconds, collection).observe(seconds)


@runtime_checkable
class TokenCountingEncoder(Protocol):
    """An encoder that also says how many tokens it pooled per text (worker.encoding.StaticEncoder)."""

    def encode_with_token_counts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return the vectors and the tokens pooled per text."""


def encode_observed(encoder: Any, model: str, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Encode ``texts`` and record the call (:func:`observe_encode`); return the vectors and per-text tokens.

    An encoder without ``encode_with_token_counts`` (a test double) gives None for the tokens.
    """
    start = time.perf_counter()
    tokens: np.ndarray | None = None
    if isinstance(encoder, TokenCountingEncoder):
        vectors, tokens = encoder.encode_with_token_counts(texts)
    else:
        vectors = encoder.encode(texts)
    observe_encode(model, time.perf_counter() - start, len(texts))
    return vectors, tokens


def token_total(tokens: np.ndarray | None) -> int:
    """Sum of per-text token counts (0 when the encoder gave none)."""
    return 0 if tokens is None else int(tokens.sum())


def task_kind(task_name: str) -> str | None:
    """Return the request kind an embedq task name serves, or None for another task."""
    return _KIND_OF_TASK.get(task_name)


def _on_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_kind(task.name) is None:
        return
    _state.summary = TaskSummary(model=_state.model_id, kind=task_kind(task.name) or "")
    request = task.request
    sent_at = _sent_at(request)
    if sent_at is None or request.retries:  # a retry's wait includes its backoff: not queue wait
        return
    info = request.delivery_info or {}
    queue = str(info.get("routing_key") or "")
    observe_queue_wait(_state.model_id, queue, max(0.0, time.time() - sent_at))


def _sent_at(request: Any) -> float | None:
    value = getattr(request, SENT_AT_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(SENT_AT_HEADER)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    """Count a task that failed for good (after its retries) under its error's class name."""
    kind = task_kind(getattr(sender, "name", ""))
    if kind is None or exception is None:
        return
    record_request(_state.model_id, kind, type(exception).__name__)


def _on_postrun(
    sender: Any = None, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    if not _state.log_tasks or task is None or task_kind(task.name) is None:
        return
    summary = _state.summary
    fields: dict[str, Any] = {
        "event": "task_done",
        "task_id": task_id,
        "task": task.name,
        "state": state,
        "model": summary.model,
        "kind": summary.kind,
        "requests": summary.requests,
        "outcomes": summary.outcomes,
        **({"request_ids": summary.request_ids} if summary.request_ids else {}),
        "texts": summary.texts,
        "tokens": summary.tokens,
        "encode_s": round(summary.encode_s, 6),
    }
    if summary.queue_wait_s is not None:
        fields["queue_wait_s"] = round(summary.queue_wait_s, 6)
    if summary.milvus_rows or summary.milvus_upsert_s:
        fields["milvus_rows"] = summary.milvus_rows
        fields["milvus_upsert_s"] = round(summary.milvus_upsert_s, 6)
    logger.info("task %s %s", task_id, state, extra={"embedq": fields})


_connected: list[bool] = []


def _connect_signals() -> None:
    if _connected:
        return
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_postrun.connect(_on_postrun, weak=False)
    _connected.append(True)
