"""Client-side coalescing: small requests sent close together by many threads leave as one task.

One sender thread per client takes the waiting requests and sends them as one batch task. A
batch leaves when it is full (``max_texts`` texts or ``max_chars`` characters), or, while fewer
than ``max_in_flight`` of this client's batches are unanswered, ``wait_ms`` after the last send
and, if a batch is unanswered, ``wait_ms`` after its own first request arrived. So a lone
request leaves at once, the burst of requests that follows an answered batch (its callers
asking again) leaves together instead of its first request leaving alone and the rest waiting
a whole round trip, and under load the batches grow with the workers' pace instead of the
queue growing with tasks. The callers never wait for the send: they hold a Job and wait for
its notice.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from celery import Celery

from producer.errors import ConfigError, EmbedqError
from producer.job import ResultReader, TaskOutcome
from producer.notice import Notice
from producer.notify import ResultListener
from producer.protocol.batches import BatchItem

logger = logging.getLogger(__name__)

SendBatch = Callable[[list[BatchItem]], None]
FailBatch = Callable[[list[str], EmbedqError], None]
STALE_S = 1.0
"""A batch unanswered for this long no longer holds the next one back."""


_V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_BITS = (0x8000 << 48) | (4 << 76)  # the RFC 4122 variant and version 4, as uuid.UUID(version=4) sets them


def request_id() -> str:
    """Return a random version-4 UUID string drawn from ``random`` (reseeded from the OS at fork).

    ``uuid.uuid4()`` reads the OS random source, releasing the GIL; in a client busy with many
    threads, getting it back took about 0.2 ms a call in a profile, more than the rest of a
    batched request's client-side work. Request ids must be unique, not secret (reading a result
    by id needs access to Redis anyway). Formatted here rather than through ``uuid.UUID``, which
    cost a few microseconds a request in its checks.
    """
    digits = f"{random.getrandbits(128) & _V4_MASK | _V4_BITS:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass(frozen=True)
class BatchLimits:
    """How long a small request may wait for others (ms) and how much one batch may hold."""

    wait_ms: float = 2.0
    max_texts: int = 128
    max_chars: int = 200_000
    max_in_flight: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms must be between 0 and 1000, got {self.wait_ms!r}")
        for name, value in (
            ("batch_max_texts", self.max_texts),
            ("batch_max_chars", self.max_chars),
            ("batch_max_in_flight", self.max_in_flight),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")

    def admits(self, texts: Sequence[str]) -> bool:
        """Whether a request of ``texts`` is small enough to be coalesced."""
        return len(texts) <= self.max_texts and sum(map(len, texts)) <= self.max_chars


class Coalescer:
    """Collects small requests and hands them to ``send`` in batches, from one daemon thread."""

    def __init__(self, limits: BatchLimits, send: SendBatch, fail: FailBatch, name: str) -> None:
        self._limits = limits
        self._send = send
        self._fail = fail
        self._cond = threading.Condition()
        self._pending: deque[BatchItem] = deque()
        self._pending_texts = 0
        self._pending_chars = 0
        self._first_at = 0.0  # when the oldest waiting request arrived, or the last send if later
        self._last_send = 0.0
        self._in_flight: deque[float] = deque()  # send times of unanswered batches, oldest first
        self._closed = False
        self._idle = False  # the sender waits for a first request
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, item: BatchItem) -> None:
        """Queue ``item`` for the next batch."""
        with self._cond:
            if self._closed:
                raise ConfigError("this EmbeddingClient is closed: create a new one")
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append(item)
            self._pending_texts += len(item.texts)
            self._pending_chars += sum(map(len, item.texts))
            # Wake the sender only if it waits for a first request or the batch is now full: while
            # it waits out the window it wakes by itself (a notify costs a lock release and, on a
            # busy client, a thread switch per request).
            if self._idle or self._full():
                self._cond.notify()

    @property
    def pending(self) -> int:
        """How many requests wait to be sent."""
        return len(self._pending)

    def batch_answered(self) -> None:
        """Count one batch as answered (the listener got its notice): the next one may leave."""
        with self._cond:
            if self._in_flight:
                self._in_flight.popleft()
                self._cond.notify()

    def close(self) -> None:
        """Send what is waiting, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)

    def _full(self) -> bool:
        return self._pending_texts >= self._limits.max_texts or self._pending_chars >= self._limits.max_chars

    def _wait_s(self, now: float) -> float:
        """Seconds until the next batch may leave (0: now), for a batch that is not full."""
        while self._in_flight and self._in_flight[0] < now - STALE_S:
            self._in_flight.popleft()  # its notice was lost or it runs long: stop waiting for it
        if len(self._in_flight) >= self._limits.max_in_flight:
            return self._in_flight[0] + STALE_S - now
        if not self._in_flight:  # a lone request leaves at once unless a batch just left
            return self._last_send + self._limits.wait_ms / 1000 - now
        return self._first_at + self._limits.wait_ms / 1000 - now  # never before the last send

    def _take(self) -> list[BatchItem] | None:
        """Wait for requests and the end of the window; return the next batch (None: closed and empty)."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._idle = True
                self._cond.wait()
                self._idle = False
            while not self._closed and not self._full():
                left_s = self._wait_s(time.monotonic())
                if left_s <= 0:
                    break
                self._cond.wait(left_s)
            batch: list[BatchItem] = []
            texts = chars = 0
            while self._pending:
                item = self._pending[0]
                size = sum(map(len, item.texts))
                if batch and (
                    texts + len(item.texts) > self._limits.max_texts or chars + size > self._limits.max_chars
                ):
                    break
                self._pending.popleft()
                batch.append(item)
                texts += len(item.texts)
                chars += size
            self._pending_texts -= texts
            self._pending_chars -= chars
            self._last_send = self._first_at = time.monotonic()  # what is left behind waits from now
            self._in_flight.append(self._last_send)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._send(batch)
            except EmbedqError as exc:
                self._fail([item.id for item in batch], exc)
            except Exception as exc:
                logger.exception("sending a batch failed")
                self._fail([item.id for item in batch], EmbedqError(f"sending the batch failed: {exc!r}"))


class BatchPath:
    """A client's batching: its coalescer and its result listener, started together on first use."""

    def __init__(
        self,
        app: Celery,
        reader: ResultReader,
        limits: BatchLimits,
        send: Callable[[str, list[BatchItem]], None],
    ) -> None:
        """``send(reply channel, items)`` publishes one batch task."""
        self.limits = limits
        self._app = app
        self._reader = reader
        self._send = send
        self._lock = threading.Lock()
        self._started: tuple[Coalescer, ResultListener] | None = None
        self._pid = os.getpid()

    def submit(self, item: BatchItem) -> Notice[TaskOutcome]:
        """Queue ``item`` for the next batch; return the Notice its answer completes."""
        coalescer, listener = self._start()
        notice = listener.register(item.id)
        coalescer.add(item)
        return notice

    @property
    def pending(self) -> int:
        """How many requests wait to be sent (0 before the first one)."""
        started = self._started
        return 0 if started is None else started[0].pending

    def _start(self) -> tuple[Coalescer, ResultListener]:
        started = self._started
        if started is not None and self._pid == os.getpid():  # running in this process: no lock
            return started
        with self._lock:
            if (
                self._pid != os.getpid()
            ):  # forked after first use (a pre-forking web server): its threads stayed behind
                self._started, self._pid = None, os.getpid()
            if self._started is None:
                listener = ResultListener(self._app, self._reader, request_id())
                listener.start()  # subscribed before the first batch can be answered
                coalescer = Coalescer(
                    self.limits,
                    lambda items: self._send(listener.channel, items),
                    listener.fail,
                    f"embedq-batcher-{listener.channel}",
                )
                listener.on_notice = coalescer.batch_answered
                self._started = (coalescer, listener)
            return self._started

    def close(self) -> None:
        """Send what is waiting, then stop both threads (a later submit starts them again)."""
        with self._lock:
            started, self._started = self._started, None
        if started is not None:
            started[0].close()
            started[1].close()
