"""Coalescing on the gateway's event loop: one asyncio future per small request, one task per batch.

The producer's client batches for threads (a sender thread, a pub/sub listener thread, one
``concurrent.futures.Future`` per request and a ``call_soon_threadsafe`` to wake each waiting
coroutine). In the gateway every request already lives on one event loop, so here the requests
wait in a plain list, a batch leaves by the same rule as the client's (full, or fewer than
``max_in_flight`` batches unanswered and ``wait_ms`` since the last send), results arrive on an
asyncio pub/sub subscription of this process's reply channel, and each notice completes the
futures of its requests directly. Only the publish of a batch (Celery's synchronous send) runs in
a thread, once per batch. The messages are those of the client's batching, so workers see no
difference; each request is still stored under its own id, so a lost notice is read by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery import Celery
from redis.exceptions import RedisError

from producer.batching import STALE_S, BatchLimits, request_id
from producer.client import EmbeddingClient
from producer.errors import (
    BrokerUnavailableError,
    EmbedqError,
    MessageDecodeError,
    ModelMismatchError,
    OverloadedError,
    ResultTimeoutError,
)
from producer.job import TaskOutcome, outcome_of
from producer.notify import SWEEP_S, push_as_is, read_notice
from producer.protocol.batches import BatchItem, reply_channel
from producer.protocol.messages import EmbedResult
from producer.protocol.names import Kind

logger = logging.getLogger(__name__)

_QUEUE_CHECK_TTL_S = 0.25
_TIMEOUT_TICK_S = 0.25
"""Requests time out in buckets of this width: one loop timer per bucket instead of one per request."""
_RECONNECT_PAUSE_S = 0.5


@dataclass(frozen=True)
class BatchedResult:
    """The vectors of one request, its token total, and when its batch left (perf_counter s)."""

    vectors: np.ndarray
    tokens: int
    sent_at: float


class _Waiting:
    """One request waiting for its notice."""

    __slots__ = ("future", "model", "registered", "sent_at", "texts", "tick", "timeout_s")

    def __init__(
        self, future: asyncio.Future[BatchedResult], texts: int, model: str, tick: int, timeout_s: float
    ) -> None:
        self.future = future
        self.registered = time.monotonic()
        self.sent_at = 0.0
        self.texts = texts
        self.model = model
        self.tick = tick  # the timeout bucket it is in
        self.timeout_s = timeout_s


class _ModelQueue:
    """The requests of one model waiting to leave, and its batches in flight."""

    def __init__(self, client: EmbeddingClient) -> None:
        self.client = client
        self.pending: list[BatchItem] = []
        self.pending_texts = 0
        self.pending_chars = 0
        self.last_send = 0.0
        self.in_flight: deque[float] = deque()  # send times of unanswered batches, oldest first
        self.flush: asyncio.TimerHandle | asyncio.Handle | None = None
        self.checked_at = -_QUEUE_CHECK_TTL_S
        self.check: asyncio.Future[None] | None = None


class LoopBatcher:
    """Sends small requests of any model in batches and completes each request's future from its notice."""

    def __init__(self, app: Celery, redis: Any, limits: BatchLimits, *, max_queue_depth: int | None) -> None:
        """``redis`` is a ``redis.asyncio`` client of the result backend (notices and results by id)."""
        self._app = app
        self._redis = redis
        self._limits = limits
        self._max_queue_depth = max_queue_depth
        self.channel = reply_channel(request_id())
        self._queues: dict[str, _ModelQueue] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._timeouts: dict[int, set[str]] = {}  # tick -> ids of the requests timing out at its end
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="embedq-gateway-sender")
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._closed = False

    # -- submitting ---------------------------------------------------------------------------

    async def embed(
        self, client: EmbeddingClient, kind: Kind, texts: Sequence[str], timeout_s: float
    ) -> BatchedResult:
        """Queue ``texts`` for the model's next batch and await their vectors (or ResultTimeoutError)."""
        await self._ensure_listening()
        queue = self._queues.get(client.model)
        if queue is None:
            queue = self._queues[client.model] = _ModelQueue(client)
        await self._check_queue(queue)
        if self._max_queue_depth is not None and len(queue.pending) >= self._max_queue_depth:
            raise OverloadedError(
                f"{len(queue.pending)} requests of this gateway wait to be sent to queue {client.queue}, at "
                f"the limit of {self._max_queue_depth} (EMBEDQ_MAX_QUEUE_DEPTH): the workers are not keeping "
                "up; retry later or start more workers"
            )
        loop = asyncio.get_running_loop()
        item = BatchItem(request_id(), kind, tuple(texts), time.time() + timeout_s)
        future: asyncio.Future[BatchedResult] = loop.create_future()
        tick = math.ceil((loop.time() + timeout_s) / _TIMEOUT_TICK_S)
        bucket = self._timeouts.get(tick)
        if bucket is None:
            bucket = self._timeouts[tick] = set()
            loop.call_at(tick * _TIMEOUT_TICK_S, self._time_out, tick)
        bucket.add(item.id)
        self._waiting[item.id] = _Waiting(future, len(texts), client.model, tick, timeout_s)
        queue.pending.append(item)
        queue.pending_texts += len(texts)
        queue.pending_chars += sum(map(len, texts))
        self._schedule(queue, loop)
        try:
            return await future
        finally:
            self._waiting.pop(item.id, None)
            bucket.discard(item.id)

    def _time_out(self, tick: int) -> None:
        """Fail the requests of bucket ``tick`` still waiting with ResultTimeoutError."""
        for item_id in self._timeouts.pop(tick, ()):
            waiting = self._waiting.pop(item_id, None)
            if waiting is not None and not waiting.future.done():
                waiting.future.set_exception(
                    ResultTimeoutError(
                        f"request {item_id} is not done after {waiting.timeout_s:g} s; it may still "
                        "complete: retry, or start more workers"
                    )
                )

    async def _check_queue(self, queue: _ModelQueue) -> None:
        """Raise NoWorkerError or OverloadedError as the client would; one check per queue every 0.25 s."""
        now = time.monotonic()
        if now - queue.checked_at < _QUEUE_CHECK_TTL_S:
            return
        if queue.check is None or queue.check.done():
            check_queue = queue.client.check_queue
            queue.check = asyncio.ensure_future(asyncio.to_thread(check_queue, queue.client.queue))
        check = queue.check
        await asyncio.shield(check)
        if queue.check is check:
            queue.checked_at = now

    # -- sending ------------------------------------------------------------------------------

    def _full(self, queue: _ModelQueue) -> bool:
        limits = self._limits
        return queue.pending_texts >= limits.max_texts or queue.pending_chars >= limits.max_chars

    def _schedule(self, queue: _ModelQueue, loop: asyncio.AbstractEventLoop) -> None:
        """Send now if the batch may leave, else arrange a send when it may (one timer per queue)."""
        if not queue.pending:
            return
        if self._full(queue):
            if queue.flush is not None:
                queue.flush.cancel()
            queue.flush = None
            self._send(queue)
            return
        if queue.flush is not None:
            return
        now = time.monotonic()
        while queue.in_flight and queue.in_flight[0] < now - STALE_S:
            queue.in_flight.popleft()  # its notice was lost or it runs long: stop waiting for it
        if len(queue.in_flight) >= self._limits.max_in_flight:
            left_s = queue.in_flight[0] + STALE_S - now  # a notice reschedules sooner
        else:
            left_s = queue.last_send + self._limits.wait_ms / 1000 - now
        if left_s <= 0:
            queue.flush = loop.call_soon(self._flush, queue)
        else:
            queue.flush = loop.call_later(left_s, self._flush, queue)

    def _flush(self, queue: _ModelQueue) -> None:
        queue.flush = None
        now = time.monotonic()
        while queue.in_flight and queue.in_flight[0] < now - STALE_S:
            queue.in_flight.popleft()
        if self._full(queue) or (
            len(queue.in_flight) < self._limits.max_in_flight
            and now >= queue.last_send + self._limits.wait_ms / 1000
        ):
            self._send(queue)
        self._schedule(queue, asyncio.get_running_loop())

    def _send(self, queue: _ModelQueue) -> None:
        """Take the next batch off ``queue`` and publish it from the sender thread."""
        limits = self._limits
        batch: list[BatchItem] = []
        texts = chars = 0
        for item in queue.pending:
            size = sum(map(len, item.texts))
            if batch and (texts + len(item.texts) > limits.max_texts or chars + size > limits.max_chars):
                break
            batch.append(item)
            texts += len(item.texts)
            chars += size
        del queue.pending[: len(batch)]
        queue.pending_texts -= texts
        queue.pending_chars -= chars
        queue.last_send = time.monotonic()
        queue.in_flight.append(queue.last_send)
        sent_at = time.perf_counter()
        for item in batch:
            waiting = self._waiting.get(item.id)
            if waiting is not None:
                waiting.sent_at = sent_at
        loop = asyncio.get_running_loop()
        sending = loop.run_in_executor(self._sender, queue.client.send_batch, self.channel, batch)
        sending.add_done_callback(lambda done: self._sent(done, queue, batch))

    def _sent(self, done: asyncio.Future[None], queue: _ModelQueue, batch: list[BatchItem]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            return
        self._answered(queue)  # no notice will come for it: let the next batch leave
        error = exc if isinstance(exc, EmbedqError) else EmbedqError(f"sending the batch failed: {exc!r}")
        if not isinstance(exc, EmbedqError):
            logger.error("sending a batch failed: %r", exc)
        for item in batch:
            waiting = self._waiting.pop(item.id, None)
            if waiting is not None and not waiting.future.done():
                waiting.future.set_exception(error)

    # -- results ------------------------------------------------------------------------------

    async def _ensure_listening(self) -> None:
        """Subscribe to the reply channel before the first batch can be answered."""
        if self._subscribed is None:
            self._subscribed = asyncio.get_running_loop().create_future()
            self._listener = asyncio.ensure_future(self._listen(self._subscribed))
        if not self._subscribed.done():
            await asyncio.shield(self._subscribed)
        else:
            failure = self._subscribed.exception()
            if failure is not None:
                self._subscribed = None  # the next request tries again
                raise failure

    async def _subscribe(self) -> Any:
        pubsub = self._redis.pubsub(push_handler_func=_push_as_is)
        try:
            await pubsub.subscribe(self.channel)
        except (RedisError, OSError) as exc:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            raise BrokerUnavailableError(
                f"cannot subscribe to result notices on the result backend: {exc}; "
                "check EMBEDQ_RESULT_BACKEND and that Redis is up"
            ) from exc
        return pubsub

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        try:
            pubsub = await self._subscribe()
        except BrokerUnavailableError as exc:
            subscribed.set_exception(exc)
            return
        subscribed.set_result(None)
        next_sweep = time.monotonic() + SWEEP_S
        while not self._closed:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=SWEEP_S)
                if message is not None and message.get("type") == "message":
                    self._deliver(message["data"])
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_S
                    await self._sweep(time.monotonic() - SWEEP_S)
            except (RedisError, OSError, BrokerUnavailableError) as exc:
                if self._closed:
                    break
                logger.warning("result notices interrupted (%s); reconnecting", exc)
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                pubsub = await self._resubscribe()
            except Exception:  # a bad notice must not stop the answers to every later request
                logger.exception("handling a result notice on %s failed", self.channel)
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()

    async def _resubscribe(self) -> Any:
        while True:
            await asyncio.sleep(_RECONNECT_PAUSE_S)
            try:
                pubsub = await self._subscribe()
                await self._sweep(time.monotonic())  # notices sent while unsubscribed are lost: read by id
                return pubsub
            except (RedisError, OSError, BrokerUnavailableError) as exc:
                logger.warning("still cannot subscribe to result notices: %s", exc)

    def _deliver(self, raw: bytes) -> None:
        decode = self._app.backend.decode_result
        model = None
        for item_id, stored in read_notice(raw, self.channel):
            waiting = self._waiting.pop(item_id, None)
            if waiting is not None:
                model = waiting.model
                self._complete(waiting, outcome_of(decode(stored)))
        queue = None if model is None else self._queues.get(model)
        if queue is not None:
            self._answered(queue)

    def _answered(self, queue: _ModelQueue) -> None:
        """Count one batch of ``queue`` as answered; the next one may leave."""
        if not queue.in_flight:
            return
        queue.in_flight.popleft()
        if queue.flush is not None:  # it may wait for this very answer
            queue.flush.cancel()
            queue.flush = None
        self._schedule(queue, asyncio.get_running_loop())

    def _complete(self, waiting: _Waiting, outcome: TaskOutcome) -> None:
        """Resolve one request's future with its vectors or its own error."""
        future = waiting.future
        if future.done():
            return
        if outcome.error is not None:
            future.set_exception(outcome.error)
            return
        try:
            result = EmbedResult.decode(outcome.value)
        except MessageDecodeError as exc:
            future.set_exception(exc)
            return
        if result.model != waiting.model or result.count != waiting.texts:
            future.set_exception(
                ModelMismatchError(
                    f"a worker answered {result.count} vectors of model {result.model!r} for "
                    f"{waiting.texts} texts of model {waiting.model!r}"
                )
            )
            return
        tokens = sum(result.tokens) if result.tokens is not None else 0
        future.set_result(BatchedResult(result.view(), tokens, waiting.sent_at))

    async def _sweep(self, registered_before: float) -> None:
        """Read by id the requests waiting since before ``registered_before``; complete the finished ones."""
        old = [(item_id, w) for item_id, w in self._waiting.items() if w.registered < registered_before]
        if not old:
            return
        backend = self._app.backend
        raws = await self._redis.mget([backend.get_key_for_task(item_id) for item_id, _ in old])
        for (item_id, waiting), raw in zip(old, raws, strict=True):
            if raw is None:
                continue
            outcome = outcome_of(backend.decode_result(raw))
            if outcome.state in ("done", "failed"):
                self._waiting.pop(item_id, None)
                self._complete(waiting, outcome)

    async def close(self) -> None:
        """Stop listening and the sender thread (requests still waiting end with their timeouts)."""
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._listener
        self._sender.shutdown(wait=False)


async def _push_as_is(message: Any) -> Any:
    """Hand a pub/sub message over unchanged (see producer.notify.push_as_is: the default formats it)."""
    return push_as_is(message)
