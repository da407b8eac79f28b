"""Queue depth and readiness, sampled from the broker by the worker's parent (not per request)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from producer.errors import BrokerUnavailableError
from worker.metrics.definitions import QUEUE_DEPTH, WORKER_READY

logger = logging.getLogger(__name__)

BrokerClientFactory = Callable[[], AbstractContextManager[Any]]
"""Lends a Redis client of the worker's broker (``producer.celery_config.broker_client``)."""

DEFAULT_SAMPLE_INTERVAL_S = 5.0


class BrokerSampler:
    """Reads the length of each consumed queue list every ``interval_s``, and answers readiness probes.

    Also a prometheus_client collector: ``embedq_queue_depth{queue}`` (the last sample; absent
    while the broker is unreachable) and ``embedq_worker_ready`` (1 or 0).
    """

    def __init__(
        self,
        broker_client: BrokerClientFactory,
        queues: Sequence[str],
        *,
        interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    ) -> None:
        self._broker_client = broker_client
        self._queues = tuple(queues)
        self._interval_s = interval_s
        self._depths: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.model_loaded = False

    def sample(self) -> bool:
        """Read every queue's length now; return whether the broker answered."""
        try:
            with self._broker_client() as client:
                pipe = client.pipeline()
                for queue in self._queues:
                    pipe.llen(queue)
                depths = dict(zip(self._queues, (int(n) for n in pipe.execute()), strict=True))
        except BrokerUnavailableError as exc:
            logger.warning("queue depth not sampled: %s", exc)
            with self._lock:
                self._depths = {}
            return False
        with self._lock:
            self._depths = depths
        return True

    def broker_reachable(self) -> bool:
        """Ping the broker now (used by /ready)."""
        try:
            with self._broker_client() as client:
                return bool(client.ping())
        except BrokerUnavailableError:
            return False

    def ready(self) -> bool:
        """Return whether the model is loaded and the broker answers a ping now."""
        return self.model_loaded and self.broker_reachable()

    def start(self) -> None:
        """Sample now and then every ``interval_s`` on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="embedq-queue-depth", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval_s)

    def describe(self) -> list[Any]:
        """Metric families without values (for registries that check names)."""
        return list(self._families(include_values=False))

    def collect(self) -> Iterator[Any]:
        """Metric families of the last sample."""
        return self._families(include_values=True)

    def _families(self, *, include_values: bool) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(
            QUEUE_DEPTH, "Tasks waiting in the broker list of each queue (last sample).", labels=["queue"]
        )
        ready = GaugeMetricFamily(
            WORKER_READY, "1 when the model is loaded and the broker answered the last sample."
        )
        if include_values:
            with self._lock:
                depths = dict(self._depths)
            for queue, value in depths.items():
                depth.add_metric([queue], value)
            ready.add_metric([], 1.0 if self.model_loaded and bool(depths) else 0.0)
        yield depth
        yield ready
