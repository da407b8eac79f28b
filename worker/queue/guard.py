"""Malformed queue messages are refused one by one, and a lost broker connection is survived.

Anything that can reach Redis can push onto a model's queue list. Without this guard, Celery 5.7
and kombu end the worker on the first item that is not a well-formed task message (one line of
non-JSON, a body that is not ``[args, kwargs, embed]``, a ``timelimit`` header that is not a
pair): "Unrecoverable error", exit status 0. Worse, a message that fails after it was taken
is restored to the queue at shutdown, so it stops every worker started after it.

Two layers, both installed by :func:`install_message_guard`:

- :class:`GuardedTransport` (the broker transport) drops a queue item that is not a kombu
  message (not UTF-8 JSON, no ``properties``, an undecodable body) with one log line, and
  survives a lost broker connection while tasks are unacknowledged (:class:`GuardedQoS`);
- :class:`GuardedConsumer` (the worker consumer) checks each task message before Celery reads it:
  a Celery protocol 2 ``embedq.*`` task, an accepted content type (msgpack; pickle is refused
  before its body is touched), a body ``[list, map with str keys, map or null]`` without
  callbacks or chains, well-typed headers, and an eta within the visibility timeout. A refused
  message is acked, logged, and, when it carries a task id, stored as failed with
  :class:`MessageDecodeError`, so its producer sees a typed error by id instead of waiting forever.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from celery import Celery
from celery.utils.time import maybe_iso8601
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed, DecodeError, OperationalError
from kombu.serialization import prepare_accept_content
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json
from redis.exceptions import RedisError

from producer.errors import MessageDecodeError
from producer.limits import MESSAGE_MAX_DEPTH, METADATA_MAX_DEPTH, depth_exceeds
from worker.queue.broker_memory import wait_while_out_of_memory

logger = logging.getLogger(__name__)

TASK_PREFIX: Final = "embedq."
GUARDED_TRANSPORT_ALIAS: Final = "embedqredis"
_UNIX_SOCKET_PREFIX: Final = "redis+socket://"
_MAX_ID_CHARS: Final = 255
_ID_HEADERS: Final = ("root_id", "parent_id", "group")
_WORKFLOW_KEYS: Final = ("callbacks", "errbacks", "chain", "chord")
_REDIS_VISIBILITY_TIMEOUT_S: Final = 3600.0  # kombu's Redis transport default
# What building a kombu Message or a Celery Request raises on a value of the wrong shape.
_SHAPE_ERRORS: Final = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)
# What handing a request to the prefork pool (pickling it in this process) raises on a hostile value.
_HANDOFF_ERRORS: Final = (RecursionError, pickle.PicklingError)


def _drop_malformed(queue: str, exc: BaseException) -> None:
    logger.error(
        "dropped a malformed item of queue %s (not a kombu message: %s: %s)",
        queue,
        type(exc).__name__,
        str(exc)[:200],
    )


def _check_envelope(message: Any) -> None:
    """Raise KeyError or TypeError unless kombu's Redis QoS can track ``message`` (tag, exchange, key)."""
    if not isinstance(message.delivery_tag, str):
        raise TypeError(f"delivery_tag is {type(message.delivery_tag).__name__}, not str")
    info = message.delivery_info
    if not isinstance(info, dict):
        raise TypeError(f"delivery_info is {type(info).__name__}, not a map")
    for key in ("exchange", "routing_key"):
        if not isinstance(info.get(key), str):
            raise KeyError(f"delivery_info.{key}")


def _connection_gone(channel: Any) -> bool:
    """Whether the channel's broker connection was closed (or its transport collected) after a loss."""
    return channel.connection is None or channel.connection.client is None


class GuardedQoS(kombu_redis.QoS):
    """kombu's Redis QoS, surviving a lost broker connection while it holds unacknowledged messages.

    When the broker connection drops, Celery 5.7 collects the transport, closes the channel and
    reconnects on a new one. kombu then fails with AttributeError on the missing client, which
    stopped the worker ("Unrecoverable error"), in two places: restoring the messages the old
    channel held (a running acks-late task, a scheduled retry) while it closes, and acking or
    rejecting such a message once its task ends after the reconnection. Neither can reach the
    broker through the old channel: the messages stay in the broker's unacked index, where a
    worker restores them after the visibility timeout (or were lost with a broker restart).
    """

    def restore_unacked(self, client: Any = None) -> Any:
        """Put delivered, unacknowledged messages back on their queues, if the connection still allows it."""
        if client is None and _connection_gone(self.channel):
            logger.warning(
                "the broker connection was lost with %d unacknowledged messages: the broker redelivers "
                "them after the visibility timeout",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge a message, unless it came through a connection that is gone (see the class)."""
        if _connection_gone(self.channel):
            self._forget(delivery_tag)
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Reject a message, unless it came through a connection that is gone (see the class)."""
        if _connection_gone(self.channel):
            self._forget(delivery_tag)
            return
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]

    def _forget(self, delivery_tag: str) -> None:
        logger.warning(
            "a task ended after the broker connection it came through was lost: its message %s cannot be "
            "acknowledged, and the broker redelivers it after the visibility timeout if it still has it",
            delivery_tag,
        )
        self._delivered.pop(delivery_tag, None)


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, dropping queue items it cannot turn into a message."""

    QoS = GuardedQoS

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # BRPOP already removed the item, so dropping it is all that is left to do.
            _drop_malformed("(read by BRPOP)", exc)
            return False

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Callable[[Any], Any], consumer_tag: str, **kwargs: Any
    ) -> None:
        """Consume ``queue`` like kombu, but refuse a raw item that does not make a Message."""
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)  # type: ignore[no-untyped-call]

        # The same three steps as kombu's own callback, with the Message built under a guard.
        def on_raw_message(raw_message: Any) -> Any:
            try:
                message = self.Message(raw_message, channel=self)  # type: ignore[no-untyped-call]
                _check_envelope(message)
            except _SHAPE_ERRORS as exc:
                _drop_malformed(queue, exc)
                return None
            if not no_ack and not self._track(queue, message):
                return None
            return callback(message)

        self.connection._callbacks[queue] = on_raw_message

    def _queue_bind(self, *args: Any, **kwargs: Any) -> None:
        """Bind a queue like kombu (a Lua script that writes), waiting while the broker is out of memory."""

        def bind() -> None:
            kombu_redis.Channel._queue_bind(self, *args, **kwargs)  # type: ignore[no-untyped-call]

        if not wait_while_out_of_memory(bind, "binding a queue"):
            bind()  # told to stop: one last try, whose error ends the start-up

    def _track(self, queue: str, message: Any) -> bool:
        """Record a taken message as unacknowledged, waiting while the broker is out of memory.

        If the worker is told to stop first, the message goes back on its queue when Redis allows.
        """
        tag = message.delivery_tag
        if wait_while_out_of_memory(lambda: self.qos.append(message, tag), f"task message {tag}"):
            return True
        try:
            self.client.rpush(queue, kombu_json.dumps(message._raw))  # type: ignore[no-untyped-call]
        except RedisError as exc:
            logger.error("the worker stopped while Redis was full: task message %s is lost (%s)", tag, exc)
        return False


class GuardedTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`GuardedChannel`."""

    Channel = GuardedChannel


def _is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID_CHARS


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _identity_problem(headers: Mapping[str, Any]) -> str | None:
    """Say what is wrong with the task name and ids of a protocol 2 message, or None."""
    task = headers.get("task")
    if not isinstance(task, str) or not task.startswith(TASK_PREFIX):
        return f"task name {str(task)[:80]!r} is not an embedq task (embedq.*)"
    if not _is_id(headers.get("id")):
        kind = type(headers.get("id")).__name__
        return f"task id is {kind}, not a string of 1 to {_MAX_ID_CHARS} characters"
    for key in _ID_HEADERS:
        if headers.get(key) is not None and not _is_id(headers[key]):
            return f"header {key} is {type(headers[key]).__name__}, not a task id"
    return None


def _eta_problem(eta: datetime, max_eta_ahead_s: float | None) -> str | None:
    """Say why an ``eta`` is too far ahead to hold, or None."""
    if max_eta_ahead_s is None:
        return None
    if eta.tzinfo is None:  # Celery reads a naive eta as UTC (enable_utc)
        eta = eta.replace(tzinfo=UTC)
    ahead_s = (eta - datetime.now(UTC)).total_seconds()
    if ahead_s <= max_eta_ahead_s:
        return None
    return (
        f"header eta is {ahead_s:.0f} s ahead, beyond the broker's visibility timeout "
        f"({max_eta_ahead_s:.0f} s): a worker would hold it in memory while the broker delivers it "
        "again to another; embedq tasks are not scheduled ahead, so send the request when it is due"
    )


def _schedule_problem(headers: Mapping[str, Any], max_eta_ahead_s: float | None = None) -> str | None:
    """Say what is wrong with the retry count, time limits and dates of a protocol 2 message, or None."""
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        return f"header retries is {retries!r:.40}, not a non-negative int"
    limits = headers.get("timelimit")
    if limits is not None and (
        not isinstance(limits, list | tuple)
        or len(limits) != 2
        or not all(limit is None or _is_number(limit) for limit in limits)
    ):
        return f"header timelimit is {limits!r:.40}, not a pair of seconds or nulls"
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            return f"header {key} is {type(value).__name__}, not an ISO 8601 string"
        try:
            when = maybe_iso8601(value)
        except (ValueError, OverflowError):
            return f"header {key} {value[:40]!r} is not an ISO 8601 date"
        if key == "eta" and isinstance(when, datetime):
            problem = _eta_problem(when, max_eta_ahead_s)
            if problem is not None:
                return problem
    return None


def _body_problem(body: object) -> str | None:
    """Say what is wrong with a decoded protocol 2 body ``[args, kwargs, embed]``, or None."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"body is {type(body).__name__}, not [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return f"args is {type(args).__name__}, not a list"
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        return "kwargs is not a map with string keys"
    if embed is not None and not isinstance(embed, dict):
        return f"embed is {type(embed).__name__}, not a map"
    if embed and any(embed.get(key) for key in _WORKFLOW_KEYS):
        return "callbacks, errbacks, chains and chords are not accepted by embedq workers"
    if depth_exceeds(body, MESSAGE_MAX_DEPTH):
        # Celery pickles the body for the pool: a deep one raised RecursionError and ended the worker.
        return f"body nests deeper than {MESSAGE_MAX_DEPTH} levels (metadata: at most {METADATA_MAX_DEPTH})"
    return None


def task_message_problem(
    message: Any, accept: frozenset[str], max_eta_ahead_s: float | None = None
) -> str | None:
    """Say why a received task message must be refused, or None if Celery may handle it.

    ``accept`` is the set of accepted content types: a body of another type is never decoded.
    An ``eta`` more than ``max_eta_ahead_s`` ahead is refused (None: any eta).
    """
    headers = message.headers
    if not isinstance(headers, Mapping):
        return f"headers are {type(headers).__name__}, not a map"
    if "task" not in headers:
        return "no task header: not a Celery protocol 2 task message"
    if depth_exceeds(headers, MESSAGE_MAX_DEPTH):
        return f"headers nest deeper than {MESSAGE_MAX_DEPTH} levels"
    problem = _identity_problem(headers) or _schedule_problem(headers, max_eta_ahead_s)
    if problem is not None:
        return problem
    if message.content_type not in accept:
        return (
            f"content type {str(message.content_type)[:80]!r} is refused without being decoded: "
            f"embedq workers accept {sorted(accept)}"
        )
    try:
        body = message.decode()
    except (DecodeError, ContentDisallowed, *_SHAPE_ERRORS) as exc:
        return f"body does not decode as {message.content_type}: {type(exc).__name__}"
    return _body_problem(body)


def _task_id(message: Any) -> str | None:
    """Return the id to record a refusal under: the id header, else the correlation id (Celery sets both)."""
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    properties = message.properties if isinstance(message.properties, Mapping) else {}
    for candidate in (headers.get("id"), properties.get("correlation_id")):
        if _is_id(candidate):
            return str(candidate)
    return None


def max_eta_ahead(app: Celery) -> float:
    """Return how far ahead a task's eta may be: the broker's visibility timeout.

    A Redis broker delivers an unacknowledged message again once the visibility timeout has
    passed, so a task held in worker memory for longer would run twice (and pile up meanwhile).
    Retries (at most a minute of backoff) stay well inside it.
    """
    options = app.conf.broker_transport_options or {}
    return float(options.get("visibility_timeout", _REDIS_VISIBILITY_TIMEOUT_S))


class GuardedConsumer(Consumer):  # type: ignore[misc]  # Celery ships no type hints
    """Celery's worker consumer, refusing malformed task messages before Celery reads them."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Wrap Celery's task message handler with :func:`task_message_problem`."""
        handle = super().create_task_handler(*args, **kwargs)
        accept = frozenset(prepare_accept_content(self.app.conf.accept_content))  # type: ignore[no-untyped-call]
        max_eta_ahead_s = max_eta_ahead(self.app)

        def on_task_received(message: Any) -> Any:
            problem = task_message_problem(message, accept, max_eta_ahead_s)
            if problem is not None:
                return self.refuse_message(message, problem)
            try:
                return handle(message)
            except (*_SHAPE_ERRORS, *_HANDOFF_ERRORS) as exc:
                # A header or value this guard does not know about, or a request the pool cannot be
                # handed (pickling it failed): refused like the others, the worker goes on.
                detail = f"{type(exc).__name__}: {str(exc)[:200]}"
                return self.refuse_message(message, f"Celery could not take it: {detail}")

        return on_task_received

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        """Refuse a message kombu could not decode (e.g. a bad compression) without logging its body."""
        self.refuse_message(message, f"body does not decode: {type(exc).__name__}")

    def refuse_message(self, message: Any, problem: str) -> None:
        """Log, record as failed by task id (if it has one) and ack a message that cannot run."""
        task_id = _task_id(message)
        info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        queue = info.get("routing_key", "?")
        logger.error("refused task message %s from queue %s: %s", task_id or "(no id)", queue, problem)
        if task_id is not None:
            error = MessageDecodeError(f"task {task_id} was refused by the worker: {problem}")
            try:
                self.app.backend.mark_as_failure(task_id, error)
            except (RedisError, OperationalError, OSError) as exc:  # the message is refused all the same
                logger.warning("could not record task %s as failed: %s", task_id, exc)
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors, requeue=False)


def install_message_guard(app: Celery) -> None:
    """Make a worker app refuse malformed queue messages one by one (see the module docstring).

    A ``redis+socket://`` broker URL names its transport itself, which kombu prefers over
    ``broker_transport``: it is rewritten to name the guarded transport, through an alias
    (kombu takes only alias names, not import paths, from a URL).
    """
    guarded = f"{GuardedTransport.__module__}:{GuardedTransport.__name__}"
    TRANSPORT_ALIASES[GUARDED_TRANSPORT_ALIAS] = guarded
    app.conf.broker_transport = guarded
    app.conf.worker_consumer = f"{GuardedConsumer.__module__}:{GuardedConsumer.__name__}"
    url = str(app.conf.broker_url or "")
    if url.startswith(_UNIX_SOCKET_PREFIX):
        app.conf.broker_url = f"{GUARDED_TRANSPORT_ALIAS}+{url.removeprefix('redis+')}"
