"""The Celery configuration producers and workers share, built in one place from Settings."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from producer.broker_checks import broker_error, refuse_at_once
from producer.protocol.names import queue_for_model
from producer.protocol.vectors_apart import APART_TTL_MARGIN_S, VECTORS_KEY_FIELD, ApartVectors, vectors_key
from producer.redis_raw import execute_transaction
from producer.sentinel import is_sentinel_url
from producer.settings import Settings, redact_url

BROKER_ACQUIRE_TIMEOUT_S = 5.0
REDIS_SOCKET_TIMEOUT_S = 10.0
BROKER_CONNECT_TIMEOUT_S = 5.0
PUBLISH_ALWAYS_MAX_BYTES = 64 * 1024
"""Results below this size are published with the SET in one round trip, as Celery does."""


class PollingRedisBackend(RedisBackend):  # type: ignore[misc]  # Celery ships no type hints
    """Redis result backend that does not subscribe to every task it sends.

    Celery's Redis backend subscribes the sender to each task's result channel so that
    ``AsyncResult.get`` can wait on pub/sub; embedq reads results by id instead (any process, any
    thread), so those subscriptions would only pull every result over the wire a second time and
    pile up unread in the subscriber's buffer.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe: results are polled by id."""

    def store_started(self, task_id: str, request: Any, read_key: str | None = None) -> bytes | None:
        """Store ``task_id`` as STARTED unless it has a state; read ``read_key`` in the same round trip.

        Celery reads a task's state before each write so that nothing replaces a success (a
        redelivered task's STARTED): two round trips. ``SET NX`` keeps that guarantee in one, for a
        task's first attempt (no state stored yet, or one left by an attempt that did not finish);
        the caller stores a retry's STARTED through Celery, over its RETRY state. With ``read_key``
        (a key on this same server) the value is returned, else None.
        """
        meta = self._get_result_meta(
            result={"pid": os.getpid(), "hostname": getattr(request, "hostname", None)},
            state=states.STARTED,
            traceback=None,
            request=request,
        )
        meta["task_id"] = task_id
        key = self.get_key_for_task(task_id)
        value = self.encode(meta)

        def write() -> bytes | None:
            with self.client.pipeline() as pipe:
                pipe.set(key, value, ex=int(self.expires) if self.expires else None, nx=True)
                pipe.publish(key, value)
                if read_key is not None:
                    pipe.get(read_key)
                replies = pipe.execute()
            return replies[2] if read_key is not None else None

        raw: bytes | None = self.ensure(write, ())
        return raw

    def delete_with_outcome(self, task_id: str, key: str) -> None:
        """Delete ``key`` (on this same server) in the round trip that stores ``task_id``'s final outcome."""
        self._outcome_deletes[task_id] = key

    def take_outcome_delete(self, task_id: str) -> str | None:
        """Return (and forget) the key that still waits to be deleted with ``task_id``'s outcome."""
        return self._outcome_deletes.pop(task_id, None)

    @property
    def _outcome_deletes(self) -> dict[str, str]:
        deletes: dict[str, str] | None = self.__dict__.get("_embedq_outcome_deletes")
        if deletes is None:
            deletes = self.__dict__["_embedq_outcome_deletes"] = {}
        return deletes

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Store a task's state; a success in one round trip, with the keys to delete beside it.

        Celery reads the stored state before every write, so that a redelivered task's failure
        never replaces a success; a success itself replaces nothing worse (it is the same task's
        answer), so it is written without that read. Other states keep it.
        """
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = task_id if isinstance(task_id, str) else task_id.decode()
        if state != states.SUCCESS and self._get_task_meta_for(task_id)["status"] == states.SUCCESS:
            return result
        deletes: tuple[str, ...] = ()
        if state in states.READY_STATES and task_id in self._outcome_deletes:
            deletes = (self._outcome_deletes.pop(task_id),)
        apart = None
        vectors = result.get("vectors") if state == states.SUCCESS and type(result) is dict else None
        if isinstance(vectors, ApartVectors):
            apart = (vectors_key(meta["task_id"]), vectors)
            record = {name: value for name, value in result.items() if name != "vectors"}
            record[VECTORS_KEY_FIELD] = apart[0]
            meta["result"] = record
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else None
        self.ensure(self._set_deleting, (self.get_key_for_task(task_id), value, expires, deletes, apart))
        return result

    def _set(self, key: str | bytes, value: bytes | str, expires: float | None = None) -> None:
        """Store a result (Celery's hook for every write): see ``_set_deleting``."""
        self._set_deleting(key, value, expires, ())

    def _set_deleting(
        self,
        key: str | bytes,
        value: bytes | str,
        expires: float | None,
        deletes: tuple[str, ...],
        apart: tuple[str, ApartVectors] | None = None,
    ) -> None:
        """Store a result, delete ``deletes`` in the same round trip; publish a large one only to listeners.

        Celery's Redis backend sends every result twice (SET, then PUBLISH to the task's channel
        for ``AsyncResult.get`` waiters). embedq readers poll by id, so for a bulk task's vectors
        (megabytes) the PUBLISH doubled the bytes the worker writes and Redis reads, for no one.
        Counting subscribers after the SET keeps stock Celery waiters working: one that subscribed
        before the SET is counted and gets the message; one that subscribes later reads the key.

        ``apart``: (key, vectors) stored in the same transaction, straight from the vectors' memory,
        expiring a little after the record (see protocol.vectors_apart).
        """
        ttl_s = self.expires if expires is None else expires
        ttl = int(ttl_s) if ttl_s else None
        small = len(value) < PUBLISH_ALWAYS_MAX_BYTES
        commands: list[tuple[Any, ...]] = []
        if apart is not None:
            commands.append(
                ("SET", apart[0], apart[1].raw(), *(() if ttl is None else ("EX", ttl + APART_TTL_MARGIN_S)))
            )
        commands.append(("SET", key, value, *(() if ttl is None else ("EX", ttl))))
        commands.append(("PUBLISH", key, value) if small else ("PUBSUB", "NUMSUB", key))
        if deletes:
            commands.append(("DEL", *deletes))
        replies = execute_transaction(self.client, commands)
        if not small and replies[len(commands) - 1 - bool(deletes)][1]:  # PUBSUB NUMSUB: [channel, count]
            self.client.publish(key, value)


class PollingSentinelBackend(PollingRedisBackend, SentinelBackend):  # type: ignore[misc]
    """PollingRedisBackend reaching the current primary through the sentinels (SentinelBackend's pool)."""


_BACKEND_PREFIX = f"{__name__}:{PollingRedisBackend.__name__}+"
_SENTINEL_BACKEND_PREFIX = f"{__name__}:{PollingSentinelBackend.__name__}+"


def backend_setting(url: str) -> str:
    """Return the ``result_backend`` setting that selects PollingRedisBackend for a Redis ``url``."""
    if is_sentinel_url(url):
        return _SENTINEL_BACKEND_PREFIX + url
    # Celery reads "<backend class>+<url>"; its Redis backend names the unix-socket scheme "socket".
    return _BACKEND_PREFIX + url.replace("redis+socket://", "socket://", 1)


def results_share_broker(app: Celery) -> bool:
    """Whether the app's results live on its broker's server and database (the default)."""
    return str(app.conf.result_backend) == backend_setting(str(app.conf.broker_url))


def backend_url(app: Celery) -> str:
    """Return the app's result backend URL with any password redacted, for messages."""
    setting = str(app.conf.result_backend)
    return redact_url(setting.removeprefix(_BACKEND_PREFIX).removeprefix(_SENTINEL_BACKEND_PREFIX))


def _ssl_options(url: str) -> dict[str, Any] | None:
    """Verify certificates on ``rediss://`` unless the URL itself says otherwise (``ssl_cert_reqs=``)."""
    if urlsplit(url).scheme != "rediss":
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def celery_conf(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings of an embedq app (msgpack only, late acks, bounded redelivery)."""
    conf: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "result_backend": backend_setting(settings.result_backend),
        # msgpack only: pickle is never accepted, results are plain maps with raw vector bytes.
        "accept_content": ["msgpack"],
        "result_accept_content": ["msgpack"],
        "task_serializer": "msgpack",
        "result_serializer": "msgpack",
        "event_serializer": "msgpack",
        # A task is acked when it ends; a child killed mid-task gets its task run again, at most
        # max_retries times (retry_on_worker_lost), falling back to a requeue (reject_on_worker_lost).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_retry_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": True,
        "task_time_limit": settings.task_time_limit_s,
        "task_default_queue": queue_for_model(settings.model_id),
        "task_create_missing_queues": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": settings.result_ttl_s,
        "result_extended": False,  # extended results would store every request's texts again
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Without them kombu waits forever: on a connect that is never answered, and on a TLS
            # handshake with a server that does not speak TLS (rediss:// to a plain Redis).
            "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_S,
            # Used by kombu's default_channel (every broker_client): a refused AUTH fails at once.
            "errback": refuse_at_once,
        },
        "broker_connection_retry_on_startup": True,
        "redis_socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "redis_socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
    }
    if settings.sentinel_master is not None:
        conf["broker_transport_options"]["master_name"] = settings.sentinel_master
        conf["result_backend_transport_options"] = {"master_name": settings.sentinel_master}
    broker_ssl = _ssl_options(settings.broker_url)
    if broker_ssl is not None:
        conf["broker_use_ssl"] = broker_ssl
    backend_ssl = _ssl_options(settings.result_backend)
    if backend_ssl is not None:
        conf["redis_backend_use_ssl"] = backend_ssl
    return conf


def build_celery_app(settings: Settings, main: str) -> Celery:
    """Return a new Celery app configured from ``settings``; it is not made the process default."""
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_conf(settings))
    return app


@contextmanager
def broker_client(app: Celery) -> Iterator[Any]:
    """Lend a Redis client of the app's broker connection pool (same URL, TLS and key prefix as Celery)."""
    url = redact_url(str(app.conf.broker_url))
    try:
        with app.pool.acquire(block=True, timeout=BROKER_ACQUIRE_TIMEOUT_S) as connection:
            yield connection.default_channel.client
    except (RedisError, OperationalError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, OperationalError) and exc.__cause__ else exc
        raise broker_error(cause, url) from exc
