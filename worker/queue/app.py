"""The Celery app of a worker process: one model, loaded once in the parent before the pool forks."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Final

from celery import Celery, bootsteps, signals
from kombu.entity import Exchange, Queue

from producer.celery_config import broker_client, build_celery_app
from producer.errors import EXIT_PERMANENT, BrokerUnavailableError
from producer.protocol.fleet import PoolPresence
from producer.protocol.messages import WorkerPresence
from producer.protocol.names import (
    PRESENCE_TTL_S,
    bulk_queue_for_model,
    presence_key,
    queue_for_model,
    short_fingerprint,
)
from producer.settings import Settings
from worker.queue.batch_task import register_batch_task
from worker.queue.broker_checks import BrokerDistanceNote, check_broker_at_start
from worker.queue.fleet import (
    advertise_pool,
    check_fleet_model,
    describe_pools,
    other_models,
    pool_identity,
    pool_processes,
    started_later,
    usable_cpus,
    withdraw_pool,
)
from worker.queue.guard import install_message_guard
from worker.queue.heap import freeze_at_start
from worker.queue.sentinel import install_sentinel_guard
from worker.queue.tasks import CollectionSinks, Encoder, Sink, TextLimits, register_tasks

logger = logging.getLogger(__name__)


class PresenceStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """Keeps ``presence_key(queue)`` alive while this worker consumes its model's queue.

    Producers read it to tell "no worker" from "busy", and the vector dimension from its value.
    Runs on the consumer's event loop, so it stops while the broker connection is down.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    presence: ClassVar[WorkerPresence]
    fingerprint: ClassVar[str]
    started_at: ClassVar[float]
    refused: ClassVar[str | None] = None
    """Why this worker stopped itself: it joined a queue served by other files under its model name."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer_entry: Any = None
        self._keys: list[str] = []
        self._queues: list[str] = []
        self._consumer: Any = None
        self._reachable = False

    def start(self, consumer: Any) -> None:
        """Advertise the model's queues it consumes now and every third of the presence TTL."""
        own_queues = model_queues(self.presence.model)
        consumed = {queue.name for queue in consumer.task_consumer.queues}
        self._queues = [queue for queue in own_queues if queue in consumed]
        self._keys = [presence_key(queue) for queue in self._queues]
        self._consumer = consumer
        if not self._keys:
            logger.warning(
                "this worker consumes neither %s: producers will not see it", " nor ".join(own_queues)
            )
            return
        self._refresh(consumer.app)
        self._timer_entry = consumer.timer.call_repeatedly(PRESENCE_TTL_S / 3, self._refresh, (consumer.app,))

    def stop(self, consumer: Any) -> None:
        """Stop refreshing (also when the broker connection is lost); the keys expire within the TTL."""
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    def shutdown(self, consumer: Any) -> None:
        """At worker shutdown, withdraw this worker's pool record, so a successor need not wait it out.

        Only after a refresh that reached the broker: a broker that is down is not waited for here.
        """
        if not (self._reachable and self._queues and self._consumer is not None):
            return
        try:
            with broker_client(consumer.app) as client:
                withdraw_pool(client, self._queues, pool_identity(self._consumer))
        except BrokerUnavailableError:
            pass  # the record expires within the presence TTL

    def _refresh(self, app: Celery) -> None:
        value = self.presence.encode()
        try:
            with broker_client(app) as client:
                for key in self._keys:
                    client.set(key, value, ex=PRESENCE_TTL_S)
                identity = pool_identity(self._consumer)
                pool = PoolPresence(
                    identity, pool_processes(self._consumer), usable_cpus(), self.fingerprint, self.started_at
                )
                advertise_pool(client, self._queues, pool)
                # Two workers started at the same moment both passed the start check: the later one stops.
                others = (
                    other_models(client, self._queues, self.fingerprint, identity) if self.fingerprint else {}
                )
            self._reachable = True
            if others:
                self._mixed_fleet(others, identity)
        except BrokerUnavailableError as exc:
            self._reachable = False
            logger.warning("could not refresh the worker presence key: %s", exc)

    def _mixed_fleet(self, others: dict[str, PoolPresence], identity: str) -> None:
        message = (
            f"other workers on {self._queues[0]} serve model {self.presence.model!r} from other files: "
            f"{describe_pools(others)}; this one has fingerprint {short_fingerprint(self.fingerprint)}"
        )
        if not started_later(others, self.started_at, identity):
            logger.error("%s; they started after this one and stop themselves", message)
            return
        if type(self).refused is None:
            type(self).refused = message
            logger.critical("%s; they started first, so this worker stops (exit code 2)", message)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown: tasks running now finish


BULK_PREFETCH_MULTIPLIER: Final = 2
"""Tasks each pool process of a bulk-only worker reserves: the running one and the next."""


def model_queues(model_id: str) -> tuple[str, str]:
    """Return the model's queue of small requests and its bulk queue, in the order a worker reads them."""
    return queue_for_model(model_id), bulk_queue_for_model(model_id)


def _open_sink(
    uri: str,
    token: str | None,
    fingerprint: str | None,
    revision: str | None,
    collection: str,
    model_id: str,
    dim: int,
) -> Sink:
    from worker.milvus.sink import open_sink  # pymilvus loads in the pool process that first upserts

    return open_sink(uri, token, collection, model_id, dim, fingerprint=fingerprint, revision=revision)


def _check_fleet_at_start(app: Celery, encoder: Encoder) -> None:
    """Refuse to start beside live workers serving other files under this model's name."""
    if not encoder.fingerprint:
        return
    try:
        with broker_client(app) as client:
            check_fleet_model(client, model_queues(encoder.model_id), encoder.model_id, encoder.fingerprint)
    except BrokerUnavailableError:
        pass  # not reachable yet: Celery waits for it; the presence refresh reports a mixed fleet


def build_worker_app(settings: Settings, encoder: Encoder, queues: Sequence[str] | None = None) -> Celery:
    """Return the worker's Celery app: embed tasks bound to ``encoder``, consuming its model's queues.

    ``queues`` overrides the queues consumed (default: the model's queue, then its bulk queue; the
    words ``interactive`` and ``bulk`` stand for those two).
    """
    app = build_celery_app(settings, "embedq-worker")
    install_message_guard(app)  # one malformed queue item must not stop the worker
    install_sentinel_guard(app)  # the same guard on kombu's Sentinel transport
    own_queue, bulk_queue = model_queues(encoder.model_id)
    aliases = {"interactive": own_queue, "bulk": bulk_queue}
    names = (
        list(dict.fromkeys(aliases.get(name, name) for name in queues)) if queues else [own_queue, bulk_queue]
    )
    app.conf.task_default_queue = own_queue
    if names == [bulk_queue]:
        # Celery's prefetch is one number for all the queues a worker reads. A worker of bulk
        # chunks only reserves one more per process, which runs the moment the current one ends
        # instead of after the ack and the next fetch (round trips to the broker); a worker that
        # also reads the queue of queries keeps 1, so a query never waits behind a reserved chunk.
        app.conf.worker_prefetch_multiplier = BULK_PREFETCH_MULTIPLIER
    app.conf.task_queues = [
        Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
        for name in names
    ]
    limits = TextLimits(settings.max_texts_per_request, settings.max_text_chars)
    register_tasks(
        app,
        encoder,
        limits,
        CollectionSinks(
            partial(
                _open_sink,
                settings.milvus_uri,
                settings.milvus_token,
                encoder.fingerprint or None,
                getattr(encoder, "revision", None),
            )
        ),
        retry_backoff_s=settings.retry_backoff_s,
    )
    register_batch_task(app, encoder, limits, retry_backoff_s=settings.retry_backoff_s)
    attributes = {
        "presence": WorkerPresence(encoder.model_id, encoder.dim, getattr(encoder, "max_length", None)),
        "fingerprint": encoder.fingerprint,
        "started_at": time.time(),
        "refused": None,
    }
    step = type("PresenceStep", (PresenceStep,), attributes)
    app.steps["consumer"].add(step)
    app.steps["consumer"].add(type("BrokerDistanceNote", (BrokerDistanceNote,), {"bulk_queue": bulk_queue}))
    return app


def run_worker(
    settings: Settings,
    concurrency: int | None = None,
    queues: Sequence[str] | None = None,
    loglevel: str = "INFO",
    *,
    hostname: str | None = None,
) -> int:
    """Load the model once, then run ``celery worker`` (prefork) until told to stop; return its exit code.

    The code is 0 after a requested shutdown and non-zero after an error Celery could not recover
    from, so a supervisor restarts the worker.

    ``concurrency`` defaults to EMBEDQ_CONCURRENCY, then to the number of CPUs; ``hostname`` to
    Celery's ``celery@<host>`` (give each worker on one machine its own, e.g. ``w1@%h``).
    """
    from worker.encoding.encoder import StaticEncoder  # the model stack stays out of light imports
    from worker.metrics import WorkerObservability

    observability = WorkerObservability(settings)  # binds the metrics port first: a taken port fails fast
    # Loaded in the parent: the forked pool processes share the table pages copy-on-write. The
    # tokenizer is not used here, so its thread pool stays enabled in the children.
    encoder = StaticEncoder.from_pretrained(settings.model, tokenizer=settings.tokenizer)
    app = build_worker_app(settings, encoder, queues)
    try:
        check_broker_at_start(app, settings)
        _check_fleet_at_start(app, encoder)
    except BaseException:
        observability.close()  # frees the metrics port of a worker that will not start
        raise
    observability.attach(app, encoder.model_id)
    argv = [
        *observability.celery_options(),
        "worker",
        "--pool=prefork",
        f"--loglevel={loglevel}",
        # Mingle and gossip sync revokes and clocks between workers; embedq uses neither, and
        # mingle alone adds about a second to every start.
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname is not None:
        argv.append(f"--hostname={hostname}")
    processes = concurrency or settings.concurrency
    if processes is not None:
        argv.append(f"--concurrency={processes}")
    if (processes or os.cpu_count() or 1) >= (os.cpu_count() or 1):
        # A pool process per core already keeps every core busy; the tokenizer's own threads on
        # top only oversubscribe them (measured in bench/bench_queue.py). An explicit setting wins.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # app.worker_main drops the worker's exit code, so an "Unrecoverable error" ended with status 0
    # and no supervisor restarted the worker; the code is read off the worker as it shuts down.
    exit_codes: list[object] = []

    def remember_exit_code(sender: Any, **_: Any) -> None:
        exit_codes.append(getattr(sender, "exitcode", None))

    signals.worker_shutdown.connect(remember_exit_code, weak=False)
    unfreeze_hooks = freeze_at_start()
    try:
        app.worker_main(argv)
    finally:
        unfreeze_hooks()
        signals.worker_shutdown.disconnect(remember_exit_code)
        observability.close()
    if any(getattr(step, "refused", None) for step in app.steps["consumer"]):
        return EXIT_PERMANENT  # it stopped itself: it served other files under a queue's model name
    code = exit_codes[-1] if exit_codes else None
    return code if isinstance(code, int) else 0
