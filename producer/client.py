"""EmbeddingClient: validate texts, split them into tasks, enqueue them on the model's queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from celery import Celery
from celery.utils import uuid
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producer.batching import BatchLimits, BatchPath, request_id
from producer.broker_checks import broker_error, check_broker_policy
from producer.celery_config import broker_client, build_celery_app
from producer.errors import (
    ConfigError,
    InvalidInputError,
    ModelMismatchError,
    NoWorkerError,
    OverloadedError,
)
from producer.job import Job, JobStatus, ResultReader
from producer.limits import document_problem
from producer.payload_store import offload_large
from producer.protocol.batches import TASK_EMBED_BATCH, BatchItem, BatchRequest
from producer.protocol.documents import Document
from producer.protocol.fleet import live_pool_processes
from producer.protocol.messages import EmbedRequest, UpsertRequest, WorkerPresence
from producer.protocol.names import (
    BUNDLED_MODEL_ID,
    SENT_AT_HEADER,
    TASK_FOR_KIND,
    TASK_UPSERT_DOCUMENTS,
    Kind,
    bulk_queue_for_model,
    presence_key,
    queue_for_model,
)
from producer.protocol.payloads import INLINE_MAX_BYTES
from producer.protocol.texts import validate_texts
from producer.settings import Settings, allow_evicting_broker, check_model_id, redact_url
from producer.splitting import split_even, task_count

_WORKER_POLL_S = 0.1
_QUEUE_CHECK_TTL_S = 0.25
"""Batched requests share one worker/queue-depth check per queue for this long."""
_T = TypeVar("_T")


class EmbeddingClient:
    """Sends texts to the workers serving one model and hands back Jobs; safe to share across threads."""

    def __init__(
        self,
        broker_url: str | None = None,
        result_backend: str | None = None,
        model: str | None = None,
        *,
        app: Celery | None = None,
        max_texts_per_task: int = 4096,
        max_chars_per_task: int = 2_000_000,
        max_text_chars: int = 100_000,
        max_texts_per_job: int | None = None,
        max_queue_depth: int | None = 10_000,
        worker_wait_s: float | None = 3.0,
        bulk_min_texts: int | None = 256,
        batch_wait_ms: float | None = 2.0,
        batch_max_texts: int = 128,
        batch_max_chars: int = 200_000,
        batch_max_in_flight: int = 2,
        request_timeout_s: float | None = None,
        allow_evicting_broker: bool | None = None,
        inline_max_bytes: int | None = INLINE_MAX_BYTES,
    ) -> None:
        """Connect by URLs (a Celery app of its own) or through ``app``; ``model`` None is the bundled one.

        ``worker_wait_s`` is how long to wait for a live worker before NoWorkerError (None: never check);
        ``max_queue_depth`` is the queue length at which new jobs get OverloadedError (None: no limit);
        requests of ``bulk_min_texts`` texts or more, and all upserts, go to the model's bulk queue
        (None: only upserts), so that they never queue in front of small requests.
        ``allow_evicting_broker`` accepts a broker whose maxmemory-policy may evict queued work
        (None: EMBEDQ_ALLOW_EVICTING_BROKER); the policy is read once, at the first send.

        Small requests (at most ``batch_max_texts`` texts and ``batch_max_chars`` characters) sent
        from many threads or asyncio tasks are merged into one task (None: one task per request):
        a batch leaves when full, or when fewer than ``batch_max_in_flight`` batches of this client
        are unanswered and ``batch_wait_ms`` passed since the last one; results come back through
        one pub/sub listener. ``request_timeout_s`` is the default deadline of a request: a worker
        drops it unencoded if it is still queued then (None: no deadline).

        A request of more than ``max_texts_per_task`` texts is split into parts of equal size, as
        many as a multiple of the live pool processes serving its queue (their presence says),
        so that no process is left running the last part alone.

        A request larger than ``inline_max_bytes`` of msgpack (a bulk task) is stored on the broker
        beside its message, which carries a reference (None: always inline; workers of this
        version read both).
        """
        if (app is None) == (broker_url is None):
            raise ConfigError("pass either broker_url (and optionally result_backend) or a Celery app")
        if app is not None and result_backend is not None:
            raise ConfigError("result_backend goes with broker_url; a Celery app brings its own")
        for name, value in (
            ("max_texts_per_task", max_texts_per_task),
            ("max_chars_per_task", max_chars_per_task),
            ("max_text_chars", max_text_chars),
            ("bulk_min_texts", 1 if bulk_min_texts is None else bulk_min_texts),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")
        self.model = BUNDLED_MODEL_ID if model is None else check_model_id(model, "model")
        self.queue = queue_for_model(self.model)
        self.bulk_queue = bulk_queue_for_model(self.model)
        self._bulk_min_texts = bulk_min_texts
        self._owns_app = app is None
        if broker_url is not None:
            settings = Settings(broker_url=broker_url, result_backend=result_backend or "")
            app = build_celery_app(settings, "embedq-producer")
        self.app: Celery = app
        self.reader = ResultReader(app)
        self._max_texts_per_task = max_texts_per_task
        self._max_chars_per_task = max_chars_per_task
        self._max_text_chars = max_text_chars
        self._max_texts_per_job = max_texts_per_job
        self._max_queue_depth = max_queue_depth
        self._worker_wait_s = worker_wait_s
        self._allow_evicting = allow_evicting_broker
        self._broker_checked = False
        self._batches = (
            None
            if batch_wait_ms is None
            else BatchPath(
                app,
                self.reader,
                BatchLimits(batch_wait_ms, batch_max_texts, batch_max_chars, batch_max_in_flight),
                self._send_batch,
            )
        )
        self._request_timeout_s = request_timeout_s
        self._inline_max_bytes = inline_max_bytes
        self._checked_at: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> EmbeddingClient:
        """Build a client with the URLs, model, limits and result TTL of ``settings``."""
        app = build_celery_app(settings, "embedq-producer")
        client = cls(
            app=app,
            model=settings.model,
            max_texts_per_task=settings.max_texts_per_request,
            max_text_chars=settings.max_text_chars,
            max_queue_depth=settings.max_queue_depth,
            **{
                "batch_wait_ms": settings.batch_wait_ms,
                "batch_max_texts": settings.batch_max_texts,
                "batch_max_chars": settings.batch_max_chars,
                "batch_max_in_flight": settings.batch_max_in_flight,
                "allow_evicting_broker": settings.allow_evicting_broker,
                **options,
            },
        )
        client._owns_app = True
        return client

    def __repr__(self) -> str:
        return f"EmbeddingClient(broker={redact_url(str(self.app.conf.broker_url))!r}, model={self.model!r})"

    def close(self) -> None:
        """Send the requests still being batched, stop listening, release an app this client created."""
        if self._batches is not None:
            self._batches.close()
        if self._owns_app:
            self.app.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def embed_documents(self, texts: Sequence[str], *, timeout_s: float | None = None) -> Job:
        """Enqueue ``texts`` as documents; the Job's result is a float32 array (len(texts), dim).

        ``timeout_s`` (default: the client's ``request_timeout_s``) is the caller's deadline: a
        worker that takes the request later drops it unencoded (DeadlineExceededError).
        """
        return self._submit("document", texts, timeout_s)

    def embed_queries(self, texts: Sequence[str], *, timeout_s: float | None = None) -> Job:
        """Enqueue ``texts`` as search queries; the Job's result is a float32 array (len(texts), dim)."""
        return self._submit("query", texts, timeout_s)

    def job(self, job_id: str) -> Job:
        """Reattach to a job by id, from any process (unknown or expired ids read as pending)."""
        manifest = self.reader.manifest(job_id)
        task_ids = [job_id] if manifest is None else manifest.task_ids
        return Job(self.reader, job_id, task_ids, self.model)

    def status(self, job_id: str) -> JobStatus:
        """Return the state of the job with this id (pending, started, done or failed with its error)."""
        return self.job(job_id).status()

    def model_dim(self, queue: str | None = None) -> int:
        """Return the vector dimension the live workers of this model report (waits like a submit).

        ``queue`` None accepts a worker on either of the model's queues; else one on that queue.
        """
        return self.model_presence(queue).dim

    def model_presence(self, queue: str | None = None) -> WorkerPresence:
        """Return what a live worker of this model advertises: dimension, max_length (waits like a submit)."""
        queues = [self.queue, self.bulk_queue] if queue is None else [queue]

        def read(client: Any) -> bytes | None:
            values: list[bytes | None] = client.mget([presence_key(name) for name in queues])
            return next((value for value in values if value is not None), None)

        raw: bytes = self._wait_for_worker(read, queues[0])
        presence = WorkerPresence.decode(raw)
        if presence.model != self.model:
            raise ModelMismatchError(
                f"queue {queues[0]} is served by a worker of model {presence.model!r}, not {self.model!r}"
            )
        return presence

    def queue_for(self, text_count: int) -> str:
        """Return the queue a request of ``text_count`` texts is sent to."""
        if self._bulk_min_texts is not None and text_count >= self._bulk_min_texts:
            return self.bulk_queue
        return self.queue

    def _wait_for_worker(self, read: Callable[[Any], _T | None], queue: str) -> _T:
        """Return ``read(redis)`` once it is not None, polling up to ``worker_wait_s``; else NoWorkerError."""
        deadline = time.monotonic() + (self._worker_wait_s or 0.0)
        while True:
            with broker_client(self.app) as client:
                value = read(client)
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                how = "EMBEDQ_MODEL unset" if self.model == BUNDLED_MODEL_ID else f"EMBEDQ_MODEL={self.model}"
                raise NoWorkerError(
                    f"no worker consumes queue {queue} (model {self.model!r}) after waiting "
                    f"{self._worker_wait_s or 0:g} s: start one with {how} "
                    "(or check EMBEDQ_BROKER_URL points at the same Redis)"
                )
            time.sleep(_WORKER_POLL_S)

    def check_queue(self, queue: str) -> None:
        """Raise NoWorkerError if no worker serves ``queue``, OverloadedError if it is too deep (blocks)."""
        self._check_queue(queue)

    def _check_queue(self, queue: str) -> None:
        """Raise NoWorkerError if no worker serves ``queue``, OverloadedError if it is too deep."""
        if not self._broker_checked:
            allow = allow_evicting_broker() if self._allow_evicting is None else self._allow_evicting
            shown = redact_url(str(self.app.conf.broker_url))
            check_broker_policy(lambda: broker_client(self.app), shown, allow_evicting=allow)
            self._broker_checked = True
        if self._worker_wait_s is None and self._max_queue_depth is None:
            return

        def read(client: Any) -> tuple[bool, int] | None:
            pipe = client.pipeline()
            pipe.exists(presence_key(queue))
            pipe.llen(queue)
            present, depth = pipe.execute()
            return None if not present and self._worker_wait_s is not None else (bool(present), int(depth))

        _, depth = self._wait_for_worker(read, queue)
        if self._max_queue_depth is not None and depth >= self._max_queue_depth:
            raise OverloadedError(
                f"queue {queue} holds {depth} tasks, at the limit of {self._max_queue_depth} "
                "(EMBEDQ_MAX_QUEUE_DEPTH): retry later or start more workers"
            )

    def queue_depth(self, queue: str | None = None) -> int:
        """Return how many tasks wait in ``queue`` (default: the model's queue of small requests)."""
        with broker_client(self.app) as client:
            return int(client.llen(queue or self.queue))

    def _submit(self, kind: Kind, texts: Sequence[str], timeout_s: float | None) -> Job:
        checked = validate_texts(
            texts, max_texts=self._max_texts_per_job, max_text_chars=self._max_text_chars
        )
        if not checked:
            raise InvalidInputError("texts is empty: pass at least one text")
        timeout_s = self._request_timeout_s if timeout_s is None else timeout_s
        deadline_s = None if timeout_s is None else time.time() + timeout_s
        limits = None if self._batches is None else self._batches.limits
        if (
            limits is not None
            and len(checked) <= self._max_texts_per_task  # a request split into tasks is not batched
            and limits.admits(checked)
            and self.queue_for(len(checked)) == self.queue
        ):
            return self._submit_batched(BatchItem(request_id(), kind, tuple(checked), deadline_s))
        queue = self.queue_for(len(checked))
        self._check_queue(queue)
        processes = 0
        if len(checked) > self._max_texts_per_task:
            with broker_client(self.app) as client:
                processes = live_pool_processes(client, queue)
        tasks = task_count(len(checked), self._max_texts_per_task, processes)
        batches = split_even(checked, tasks, self._max_chars_per_task)
        task_ids = [uuid() for _ in batches]
        job_id = task_ids[0] if len(batches) == 1 else uuid()
        if len(batches) > 1:
            # Saved before sending, so a reattaching process finds every part of the job.
            self.reader.save_manifest(job_id, task_ids)
        self._send(
            TASK_FOR_KIND[kind],
            [
                (task_id, EmbedRequest(self.model, kind, tuple(batch), True).encode(), len(batch))
                for task_id, batch in zip(task_ids, batches, strict=True)  # True: vectors stored apart
            ],
            f"{kind} texts",
            queue,
            deadline_s,
        )
        return Job(
            self.reader,
            job_id,
            task_ids,
            self.model,
            queue_depth=partial(self.queue_depth, queue),
            task_rows=[len(batch) for batch in batches],
        )

    def _submit_batched(self, item: BatchItem) -> Job:
        """Hand a small request to the coalescer; its Job completes when the worker's notice arrives."""
        now = time.monotonic()
        if now - self._checked_at.get(self.queue, -_QUEUE_CHECK_TTL_S) >= _QUEUE_CHECK_TTL_S:
            self._check_queue(self.queue)
            self._checked_at[self.queue] = now
        assert self._batches is not None  # only called when batching is on
        waiting = self._batches.pending
        if self._max_queue_depth is not None and waiting >= self._max_queue_depth:
            raise OverloadedError(
                f"{waiting} requests of this client wait to be sent to queue {self.queue}, at the limit "
                f"of {self._max_queue_depth} (EMBEDQ_MAX_QUEUE_DEPTH): the workers are not keeping up; "
                "retry later or start more workers"
            )
        notice = self._batches.submit(item)
        return Job(self.reader, item.id, [item.id], self.model, notice=notice, queue_depth=self.queue_depth)

    def send_batch(self, reply_to: str, items: Sequence[BatchItem]) -> None:
        """Publish ``items`` (small requests of this model) as one batch task answered on ``reply_to``.

        For callers that coalesce requests themselves (the gateway, on its event loop).
        """
        self._send_batch(reply_to, list(items))

    def _send_batch(self, reply_to: str, items: list[BatchItem]) -> None:
        request = BatchRequest(model=self.model, items=tuple(items), reply_to=reply_to)
        texts = sum(len(item.texts) for item in items)
        self._send(
            TASK_EMBED_BATCH,
            [(request_id(), request.encode(), texts)],
            f"texts in {len(items)} requests",
            self.queue,
            offload=False,  # small by construction, and waited on by callers: one round trip less
        )

    def submit_upsert(
        self,
        collection: str,
        documents: Sequence[Document],
        *,
        skip_unchanged: bool = False,
        split: tuple[int, int] | None = None,
    ) -> str:
        """Enqueue documents to embed and upsert into the Milvus ``collection``; return the task id.

        The task's result (read with ``client.reader``) is an UpsertResult with the rows written.
        With ``skip_unchanged``, documents whose stored content hash matches are not re-written.
        With ``split`` (max tokens, overlap), each document is stored as passages ``<id>#<k>``.
        """
        if not documents:
            raise InvalidInputError("documents is empty: pass at least one document")
        for index, document in enumerate(documents):
            problem = document_problem(document.id, document.text, document.metadata)
            if problem is not None:
                raise InvalidInputError(f"documents[{index}]: {problem}")
        texts = validate_texts(
            [document.text for document in documents],
            max_texts=self._max_texts_per_task,
            max_text_chars=self._max_text_chars,
        )
        request = UpsertRequest(
            model=self.model,
            collection=collection,
            ids=tuple(document.id for document in documents),
            texts=tuple(texts),
            metadata=tuple(document.metadata for document in documents),
            skip_unchanged=skip_unchanged,
            split=split,
        )
        self._check_queue(self.bulk_queue)
        task_id: str = uuid()
        self._send(
            TASK_UPSERT_DOCUMENTS,
            [(task_id, request.encode(), len(documents))],
            f"documents for {collection}",
            self.bulk_queue,
        )
        return task_id

    def _send(
        self,
        task_name: str,
        tasks: Sequence[tuple[str, dict[str, Any], int]],
        what: str,
        queue: str,
        deadline_s: float | None = None,
        *,
        offload: bool = True,
    ) -> None:
        """Publish ``(task id, request, item count)`` tasks on ``queue`` in one connection.

        With ``deadline_s`` (epoch s), a worker that takes a task later drops it unencoded.
        """
        expires = None if deadline_s is None else datetime.fromtimestamp(deadline_s, UTC)
        try:
            inline_max = self._inline_max_bytes if offload else None
            with self.app.producer_or_acquire() as producer:
                for task_id, payload, count in tasks:
                    # Stored and published one task at a time: workers start on the first
                    # while the next is packed.
                    argument = offload_large(self.app, task_id, payload, inline_max, deadline_s)
                    self.app.send_task(
                        task_name,
                        args=[argument],
                        task_id=task_id,
                        queue=queue,
                        producer=producer,
                        # Keeps the texts out of worker logs, events and inspect replies.
                        argsrepr=f"[<{count} {what}>]",
                        kwargsrepr="{}",
                        expires=expires,
                        headers={SENT_AT_HEADER: time.time()},  # the worker's queue-wait metric
                    )
        except (OperationalError, RedisError, OSError) as exc:
            url = redact_url(str(self.app.conf.broker_url))
            cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ else exc
            raise broker_error(cause, url, "enqueue on") from exc
