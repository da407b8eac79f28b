"""One notification path per client process: a pub/sub listener thread that resolves waiting requests.

Workers publish on the client's reply channel the stored result of every request of a batch
(the same bytes they stored under the request's id). One daemon thread per client reads that
channel and completes a :class:`Notice` per waiting request: threads block on ``Notice.result``,
asyncio tasks get the outcome through one ``loop.call_soon_threadsafe`` per notice and loop. No thread
per waiter, no polling. As a safety net for a notice lost with a dropped connection, the thread
also reads the results of requests waiting longer than ``sweep_s`` by id, once per ``sweep_s``
(one MGET for all of them), and after every reconnection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producer.errors import BrokerUnavailableError, EmbedqError, MessageDecodeError, ResultTimeoutError
from producer.job import ResultReader, TaskOutcome, outcome_of
from producer.notice import Notice
from producer.protocol.batches import decode_notice, reply_channel

logger = logging.getLogger(__name__)

SWEEP_S = 1.0
"""How often requests still waiting are read by id, in case their notice was lost."""
MAX_WAIT_S = 24 * 3600.0
"""A request nobody answered for this long is forgotten (its Future fails with ResultTimeoutError)."""
_RECONNECT_PAUSE_S = 0.5
_SUBSCRIBE_TIMEOUT_S = 5.0


def read_notice(raw: bytes, channel: str) -> list[tuple[str, bytes]]:
    """Return a notice's ``(request id, stored result)`` pairs; a malformed one is logged and read as none."""
    try:
        return decode_notice(raw)
    except MessageDecodeError as exc:
        logger.warning("ignored a malformed result notice on %s: %s", channel, exc)
        return []


def push_as_is(message: Any) -> Any:
    """Hand a pub/sub message over unchanged.

    redis-py's default handler formats every message into a debug log line before dropping it
    (``"Push response: " + str(message)``), whatever the log level: for notices carrying a batch's
    vectors that was a tenth of a busy client's CPU.
    """
    return message


class ResultListener:
    """Subscribes to one reply channel and completes the Future of each request it is told about."""

    def __init__(
        self,
        app: Celery,
        reader: ResultReader,
        client_id: str,
        sweep_s: float = SWEEP_S,
        on_notice: Callable[[], None] | None = None,
    ) -> None:
        self.channel = reply_channel(client_id)
        self.on_notice = on_notice  # called once per notice (one answered batch)
        self._app = app
        self._reader = reader
        self._sweep_s = sweep_s
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[Notice[TaskOutcome], float]] = {}
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None

    def start(self) -> None:
        """Subscribe (waiting for the server's confirmation) and start the listener thread, once."""
        with self._lock:
            if self._thread is not None:
                return
            self._pubsub = self._subscribe()
            self._thread = threading.Thread(target=self._run, name=f"embedq-{self.channel}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop listening: the thread drops the subscription within ``sweep_s`` (nobody waits for it).

        Requests still waiting keep their Futures (they can be read by id).
        """
        self._stopped.set()

    def register(self, request_id: str) -> Notice[TaskOutcome]:
        """Return the Notice that completes with the outcome of ``request_id`` (register before sending)."""
        future: Notice[TaskOutcome] = Notice()
        with self._lock:
            self._waiting[request_id] = (future, time.monotonic())
        return future

    def fail(self, request_ids: list[str], error: EmbedqError) -> None:
        """Complete the Futures of requests that could not be sent with ``error``."""
        for request_id in request_ids:
            with self._lock:
                entry = self._waiting.pop(request_id, None)
            if entry is not None and not entry[0].done():
                entry[0].set_exception(error)

    @property
    def waiting(self) -> int:
        """How many requests are waiting for their outcome."""
        return len(self._waiting)

    def _subscribe(self) -> Any:
        try:
            pubsub = self._app.backend.client.pubsub(
                ignore_subscribe_messages=False, push_handler_func=push_as_is
            )
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT_S
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=_SUBSCRIBE_TIMEOUT_S)
                if message is not None and message.get("type") == "subscribe":
                    return pubsub
        except (RedisError, OperationalError, OSError) as exc:
            raise BrokerUnavailableError(
                f"cannot subscribe to result notices on the result backend: {exc}; "
                "check EMBEDQ_RESULT_BACKEND and that Redis is up"
            ) from exc
        raise BrokerUnavailableError(
            f"the result backend did not confirm the subscription to {self.channel} within "
            f"{_SUBSCRIBE_TIMEOUT_S:g} s; check EMBEDQ_RESULT_BACKEND and that Redis is up"
        )

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            with contextlib.suppress(RedisError, OSError):
                self._pubsub.close()

    def _listen(self) -> None:
        next_sweep = time.monotonic() + self._sweep_s
        while not self._stopped.is_set():
            try:
                message = self._pubsub.get_message(timeout=self._sweep_s)
                if message is not None and message.get("type") == "message":
                    self._deliver(message["data"])
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_s
                    self._sweep(time.monotonic() - self._sweep_s)
            except (RedisError, OperationalError, OSError, BrokerUnavailableError) as exc:
                if self._stopped.is_set():
                    return
                logger.warning("result notices interrupted (%s); reconnecting", exc)
                self._reconnect()

    def _reconnect(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            self._pubsub.close()
        while not self._stopped.wait(_RECONNECT_PAUSE_S):
            try:
                self._pubsub = self._subscribe()
                self._sweep(time.monotonic())  # notices sent while unsubscribed are lost: read by id
                return
            except BrokerUnavailableError as exc:
                logger.warning("still cannot subscribe to result notices: %s", exc)

    def _deliver(self, raw: bytes) -> None:
        pairs = read_notice(raw, self.channel)
        decode = self._app.backend.decode_result
        with self._lock:
            entries = [(self._waiting.pop(request_id, None), stored) for request_id, stored in pairs]
        for entry, stored in entries:
            if entry is not None:
                entry[0].set_result(outcome_of(decode(stored)))
        if self.on_notice is not None:
            self.on_notice()

    def _sweep(self, registered_before: float) -> None:
        """Read by id the requests registered before ``registered_before``; complete the finished ones."""
        now = time.monotonic()
        with self._lock:
            old = [(rid, entry) for rid, entry in self._waiting.items() if entry[1] < registered_before]
        if not old:
            return
        outcomes = self._reader.outcomes([request_id for request_id, _ in old])
        for (request_id, (future, since)), outcome in zip(old, outcomes, strict=True):
            finished = outcome.state in ("done", "failed")
            if not finished and now - since < MAX_WAIT_S:
                continue
            with self._lock:
                self._waiting.pop(request_id, None)
            if future.done():
                continue
            if finished:
                future.set_result(outcome)
            else:
                future.set_exception(
                    ResultTimeoutError(
                        f"request {request_id} had no answer in {MAX_WAIT_S:g} s: check client.status(id)"
                    )
                )
