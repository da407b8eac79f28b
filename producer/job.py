"""Job: the handle on one embedding request, its task ids, its status and its vectors by id."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producer.assembly import VectorAssembler
from producer.celery_config import backend_url
from producer.errors import (
    BrokerUnavailableError,
    DeadlineExceededError,
    EmbedqError,
    MessageDecodeError,
    ResultTimeoutError,
    error_from_name,
)
from producer.notice import Notice
from producer.protocol.messages import EmbedResult, JobManifest
from producer.protocol.names import job_key
from producer.protocol.vectors_apart import apart_key, gone_error, with_vectors
from producer.redis_raw import read_into

JobState = Literal["pending", "started", "done", "failed"]

_STATE_OF: dict[str, JobState] = {
    "PENDING": "pending",
    "RECEIVED": "pending",
    "RETRY": "pending",  # waiting in the queue for its next attempt
    "STARTED": "started",
    "SUCCESS": "done",
}
# Polls start fast (a small job is done in a few ms) and back off to a cheap rate for long jobs.
_FIRST_POLL_S = 0.0005
_POLL_GROWTH = 1.5
_MAX_POLL_S = 0.05
# A split job waits on its tasks' own channels instead (one subscription per waiting call), with a
# check at least this often in case a state was stored without a message.
_NOTIFIED_MIN_TASKS = 2
_NOTIFIED_CHECK_S = 0.25
_SUBSCRIBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands; on failure, the error type name and message the worker raised."""

    id: str
    state: JobState
    tasks_done: int
    tasks_total: int
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """One task's state as read from the result backend: its result value, or its error if failed."""

    state: JobState
    value: Any = None
    error: EmbedqError | None = None


def _as_embedq_error(exc: object) -> EmbedqError:
    """Map a failure read back from the backend onto the embedq hierarchy, by type name."""
    if isinstance(exc, EmbedqError):
        return exc
    if type(exc).__name__ == "TaskRevokedError" and "expired" in str(exc):
        return DeadlineExceededError(
            "the task was dropped unencoded: its deadline passed while it sat in the queue; start more "
            "workers, send less, or give the request a longer timeout"
        )
    return error_from_name(type(exc).__name__, str(exc))


def outcome_of(meta: dict[str, Any] | None) -> TaskOutcome:
    """Return the outcome a decoded result-backend record (or None: no record yet) stands for."""
    status = "PENDING" if meta is None else str(meta.get("status"))
    state = _STATE_OF.get(status)
    if state is not None:
        return TaskOutcome(state, value=None if meta is None else meta.get("result"))
    # FAILURE, REVOKED and any other terminal state: the stored result is the exception.
    return TaskOutcome("failed", error=_as_embedq_error(None if meta is None else meta.get("result")))


class ResultReader:
    """Reads task states and job manifests from the app's result backend (one round trip a poll)."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def _wrap(self, exc: Exception) -> BrokerUnavailableError:
        url = backend_url(self._app)
        return BrokerUnavailableError(
            f"cannot read results from {url}: {exc}; check EMBEDQ_RESULT_BACKEND and that Redis is up"
        )

    def outcomes(self, task_ids: Sequence[str], *, vectors: bool = True) -> list[TaskOutcome]:
        """Return the outcome of each task, in order (unknown ids read as pending).

        A result whose vectors are stored apart has them read back into its record (a second
        round trip), unless ``vectors`` is False: then the record names their key, for
        :meth:`read_vectors_into`.
        """
        backend = self._app.backend
        try:
            raws = backend.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
        except (RedisError, OperationalError, OSError) as exc:
            raise self._wrap(exc) from exc
        outcomes = [outcome_of(None if raw is None else backend.decode_result(raw)) for raw in raws]
        return self._with_vectors(task_ids, outcomes) if vectors else outcomes

    def _with_vectors(self, task_ids: Sequence[str], outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
        apart: list[tuple[int, str]] = []
        for index, outcome in enumerate(outcomes):
            if outcome.state != "done":
                continue
            try:
                found = apart_key(outcome.value)
            except MessageDecodeError as exc:
                outcomes[index] = TaskOutcome("failed", error=exc)
                continue
            if found is not None:
                apart.append((index, found[0]))
        if not apart:
            return outcomes
        try:
            raws = self._app.backend.client.mget([key for _, key in apart])
        except (RedisError, OperationalError, OSError) as exc:
            raise self._wrap(exc) from exc
        for (index, key), raw in zip(apart, raws, strict=True):
            outcomes[index] = (
                TaskOutcome("failed", error=gone_error(task_ids[index], key))
                if raw is None
                else TaskOutcome("done", value=with_vectors(outcomes[index].value, raw))
            )
        return outcomes

    def subscribe(self, task_ids: Sequence[str]) -> Any:
        """Return a pub/sub connection subscribed to the channels the tasks' states are published on.

        The result backend publishes every state it stores (STARTED, a result record, a failure)
        on the channel named by the task's key, as Celery's does; a large record only when someone
        listens, and a bulk task's record is small (its vectors are stored apart). Returns once the
        server confirmed every subscription.
        """
        backend = self._app.backend
        channels = [backend.get_key_for_task(task_id) for task_id in task_ids]
        pubsub = backend.client.pubsub(ignore_subscribe_messages=False)
        try:
            pubsub.subscribe(*channels)
            confirmed = 0
            deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT_S
            while confirmed < len(channels) and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=_SUBSCRIBE_TIMEOUT_S)
                confirmed += message is not None and message.get("type") == "subscribe"
            if confirmed < len(channels):
                raise TimeoutError(f"{len(channels) - confirmed} subscriptions were not confirmed")
        except BaseException:
            pubsub.close()
            raise
        return pubsub

    def read_vectors_into(self, task_id: str, key: str, out: memoryview) -> None:
        """Read the vectors stored apart under ``key`` straight into ``out`` (raise if they are gone)."""
        try:
            found = read_into(self._app.backend.client, key, out)
        except (RedisError, OperationalError, OSError) as exc:
            raise self._wrap(exc) from exc
        if not found:
            raise gone_error(task_id, key)

    def save_manifest(self, job_id: str, task_ids: Sequence[str]) -> None:
        """Record the tasks of a split job under its id, expiring with the results."""
        backend = self._app.backend
        ttl_s = int(backend.expires) if backend.expires else None  # result_expires, in seconds
        try:
            backend.client.set(job_key(job_id), JobManifest(tuple(task_ids)).encode(), ex=ttl_s)
        except (RedisError, OperationalError, OSError) as exc:
            raise self._wrap(exc) from exc

    def manifest(self, job_id: str) -> JobManifest | None:
        """Return the task list saved under ``job_id``, or None if the id is a single task's."""
        try:
            raw = self._app.backend.client.get(job_key(job_id))
        except (RedisError, OperationalError, OSError) as exc:
            raise self._wrap(exc) from exc
        return None if raw is None else JobManifest.decode(raw)


QueueDepth = Callable[[], "int | None"]


class Job:
    """An embedding request in flight: poll its status or wait for its (n, dim) float32 vectors.

    A job sent through a client's batching has a ``notice`` Future, completed by the client's
    result listener: waiting on it costs no polling. A split job's ``result()`` wakes on its
    tasks' own result channels; other waits (one task, ``result_async``) read by id with growing
    pauses.
    """

    def __init__(
        self,
        reader: ResultReader,
        job_id: str,
        task_ids: Sequence[str],
        model: str,
        *,
        notice: Notice[TaskOutcome] | None = None,
        queue_depth: QueueDepth | None = None,
        task_rows: Sequence[int] | None = None,
    ) -> None:
        """Track ``task_ids``; ``task_rows`` (texts per task) lets vectors be placed as they arrive."""
        self.id = job_id
        self.task_ids = tuple(task_ids)
        self.model = model
        self._reader = reader
        self._final: dict[str, TaskOutcome] = {}
        self._notice = notice
        self._queue_depth = queue_depth
        self._assembler = VectorAssembler(job_id, model, len(self.task_ids), task_rows)
        self._progressed = False
        self.token_counts: tuple[int, ...] | None = None
        """Tokens the encoder pooled per text, once the result is in (None if a worker did not say)."""

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, tasks={len(self.task_ids)}, model={self.model!r})"

    def status(self) -> JobStatus:
        """Return the job's state: failed if any task failed, done if all are, started if any ran."""
        outcomes = self._fetch_all()
        done = sum(outcome.state == "done" for outcome in outcomes)
        for outcome in outcomes:
            if outcome.error is not None:
                error = outcome.error
                return JobStatus(self.id, "failed", done, len(outcomes), type(error).__name__, str(error))
        if done == len(outcomes):
            state: JobState = "done"
        elif done or any(outcome.state == "started" for outcome in outcomes):
            state = "started"
        else:
            state = "pending"
        return JobStatus(self.id, state, done, len(outcomes))

    def _fetch_all(self) -> list[TaskOutcome]:
        """Fetch the tasks not yet finished (one round trip); return every task's outcome in order."""
        pending = [task_id for task_id in self.task_ids if task_id not in self._final]
        outcomes = self._reader.outcomes(pending, vectors=False) if pending else []
        current = dict(zip(pending, outcomes, strict=True))
        for task_id, outcome in current.items():
            if outcome.state in ("done", "failed"):
                self._final[task_id] = outcome
        return [self._final.get(task_id) or current[task_id] for task_id in self.task_ids]

    def _try_collect(self) -> np.ndarray | None:
        """Return the vectors if every task is done; raise the first failure; None while running."""
        outcomes = self._fetch_all()
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        for index, (task_id, outcome) in enumerate(zip(self.task_ids, outcomes, strict=True)):
            if outcome.state == "done" and index not in self._assembler:
                key = apart_key(outcome.value)
                if key is None:
                    self._assembler.add(index, EmbedResult.decode(outcome.value))
                else:  # read straight into the job's array
                    read = partial(self._reader.read_vectors_into, task_id, key[0])
                    self._assembler.add_apart(index, outcome.value, read)
                self._final[task_id] = TaskOutcome("done")  # the vectors now live in the assembler
                self._progressed = True
        if any(outcome.state != "done" for outcome in outcomes):
            return None
        return self._finish()

    def _finish(self) -> np.ndarray:
        vectors, tokens = self._assembler.finish()
        if tokens is not None:
            self.token_counts = tokens
        return vectors

    def _timeout(self, timeout_s: float) -> ResultTimeoutError:
        done = sum(1 for outcome in self._final.values() if outcome.state == "done")
        depth = self._depth_text()
        return ResultTimeoutError(
            f"job {self.id} is not done after {timeout_s:g} s ({done} of {len(self.task_ids)} tasks done"
            f"{depth}); it may still complete: wait again with job.result() or check client.status(job_id)"
        )

    def _depth_text(self) -> str:
        if self._queue_depth is None:
            return ""
        try:
            depth = self._queue_depth()
        except EmbedqError:
            depth = None
        return "; queue depth unknown" if depth is None else f"; its queue holds {depth} tasks"

    def _from_notice(self, outcome: TaskOutcome) -> np.ndarray:
        self._final[self.task_ids[0]] = outcome
        if outcome.error is not None:
            raise outcome.error
        fast = EmbedResult.fast_array(outcome.value, self.model)
        if fast is not None:  # the usual case, kept short: a well-formed answer of our model
            vectors, self.token_counts = fast
            return vectors
        if 0 not in self._assembler:
            self._assembler.add(0, EmbedResult.decode(outcome.value))
        return self._finish()

    def _poll_delays(self, timeout_s: float | None) -> Iterator[float]:
        """Yield the pauses between polls (growing, capped); raise ResultTimeoutError at the deadline."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay_s = _FIRST_POLL_S
        while True:
            if deadline is not None:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise self._timeout(timeout_s or 0.0)
                delay_s = min(delay_s, remaining_s)
            yield delay_s
            # A job whose parts keep arriving is polled closely again: its last part is read
            # within a few milliseconds of being stored, not up to the cap later.
            delay_s = _FIRST_POLL_S if self._progressed else min(delay_s * _POLL_GROWTH, _MAX_POLL_S)
            self._progressed = False

    def result(self, timeout_s: float | None = 60.0) -> np.ndarray:
        """Wait for the (n, dim) float32 vectors in input order; raise the worker's typed error on failure."""
        if self._notice is not None:
            try:
                outcome = self._notice.result(timeout_s)
            except TimeoutError as exc:
                if isinstance(exc, EmbedqError):  # the error a failed send completed the notice with
                    raise
                raise self._timeout(timeout_s or 0.0) from None
            return self._from_notice(outcome)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if len(self.task_ids) >= _NOTIFIED_MIN_TASKS:
            vectors = self._result_notified(deadline, timeout_s)
            if vectors is not None:
                return vectors
            timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
        delays = self._poll_delays(timeout_s)
        while (vectors := self._try_collect()) is None:
            time.sleep(next(delays))
        return vectors

    def _result_notified(self, deadline: float | None, timeout_s: float | None) -> np.ndarray | None:
        """Wait for a split job, collecting whenever one of its tasks stores a state (no polling).

        Wakes at least every ``_NOTIFIED_CHECK_S`` anyway (a state stored without a message). None
        means the subscription failed or broke: the caller polls from where this left off.
        """
        pending = [task_id for task_id in self.task_ids if task_id not in self._final]
        try:
            pubsub = self._reader.subscribe(pending)
        except (RedisError, OperationalError, OSError):
            return None
        try:
            while (vectors := self._try_collect()) is None:
                wait_s = _NOTIFIED_CHECK_S
                if deadline is not None:
                    remaining_s = deadline - time.monotonic()
                    if remaining_s <= 0:
                        raise self._timeout(timeout_s or 0.0)
                    wait_s = min(wait_s, remaining_s)
                if pubsub.get_message(timeout=wait_s) is not None:
                    while pubsub.get_message(timeout=0) is not None:  # a burst: one collect for all
                        pass
            return vectors
        except EmbedqError:  # the job's own failure or timeout (a TimeoutError is an OSError too)
            raise
        except (RedisError, OperationalError, OSError):
            return None
        finally:
            with contextlib.suppress(RedisError, OSError):
                pubsub.close()

    async def result_async(self, timeout_s: float | None = 60.0) -> np.ndarray:
        """Await the vectors without blocking the event loop.

        A batched job is completed by the client's listener thread (no polling); any other job is
        read by id in a thread of the default executor, with growing pauses.
        """
        if self._notice is not None:
            try:
                outcome = await await_future(self._notice, timeout_s)
            except TimeoutError as exc:
                if isinstance(exc, EmbedqError):
                    raise
                raise self._timeout(timeout_s or 0.0) from None
            return self._from_notice(outcome)
        delays = self._poll_delays(timeout_s)
        while (vectors := await asyncio.to_thread(self._try_collect)) is None:
            await asyncio.sleep(next(delays))
        return vectors


async def await_future(future: Notice[TaskOutcome], timeout_s: float | None) -> TaskOutcome:
    """Await a listener Notice from an event loop.

    Unlike ``asyncio.wrap_future``, a timeout or cancellation here leaves ``future`` untouched,
    so the request can be awaited again. The loop is woken through its ``LoopWaker``: one
    ``call_soon_threadsafe`` for all the requests a notice completes, not one each.
    """
    if future.done():
        return future.result()
    waker = LoopWaker.of(asyncio.get_running_loop())
    waiter = waker.waiter(timeout_s)
    future.add_done_callback(partial(waker.wake, waiter))
    await waiter
    return future.result()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


_COMPACT_AT = 1024


class LoopWaker:
    """Completes an event loop's waiters from other threads, waking the loop once per burst.

    It also times the waiters out. Requests awaited with the same timeout expire in the order
    they were made, so they wait in a FIFO watched by one timer, not a timer each (a timer is a
    handle pushed onto and popped off the loop's heap: a few microseconds per request, with
    thousands of requests a second). A waiter whose deadline would break the order gets a timer
    of its own.
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaker]] = (
        weakref.WeakKeyDictionary()
    )
    _by_loop_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()  # loop thread only
        self._timer: asyncio.TimerHandle | None = None
        self._compact_at = _COMPACT_AT

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopWaker:
        """Return the waker of ``loop`` (made on first use)."""
        waker = cls._by_loop.get(loop)
        if waker is None:
            with cls._by_loop_lock:
                waker = cls._by_loop.setdefault(loop, cls(loop))
        return waker

    def waiter(self, timeout_s: float | None) -> asyncio.Future[None]:
        """Return a new future of this loop that fails with TimeoutError after ``timeout_s`` (loop thread)."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        if timeout_s is None:
            return waiter
        deadline = self._loop.time() + timeout_s
        deadlines = self._deadlines
        if deadlines and deadline < deadlines[-1][0]:
            self._loop.call_at(deadline, _expire, waiter)  # out of order: a timer of its own
            return waiter
        deadlines.append((deadline, waiter))
        if len(deadlines) > self._compact_at:  # answered waiters stuck behind a slow one: drop them
            self._deadlines = deque(entry for entry in deadlines if not entry[1].done())
            self._compact_at = max(_COMPACT_AT, 2 * len(self._deadlines))
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadlines[0][0], self._expire_due)
        return waiter

    def wake(self, waiter: asyncio.Future[None], _: object = None) -> None:
        """Complete ``waiter`` on its loop soon (callable from any thread)."""
        with self._lock:
            self._ready.append(waiter)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop was closed after its callers gave up
            self._loop.call_soon_threadsafe(self._drain)

    def _expire_due(self) -> None:
        """Fail the waiters whose deadline passed; set the timer for the next one still waiting."""
        now = self._loop.time()
        deadlines = self._deadlines
        while deadlines and (deadlines[0][0] <= now or deadlines[0][1].done()):
            _expire(deadlines.popleft()[1])
        self._timer = self._loop.call_at(deadlines[0][0], self._expire_due) if deadlines else None

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for waiter in ready:
            if not waiter.done():
                waiter.set_result(None)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():  # answered: their deadline no longer matters
            deadlines.popleft()
