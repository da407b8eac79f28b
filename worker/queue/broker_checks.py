"""What a worker checks of its broker before it starts consuming (see producer.broker_checks)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Final

from celery import Celery, bootsteps
from redis.exceptions import RedisError

from producer.broker_checks import check_broker_policy
from producer.celery_config import broker_client
from producer.errors import EXIT_PERMANENT, ConfigError, EmbedqError
from producer.settings import Settings, redact_url

logger = logging.getLogger(__name__)


def _say(level: int, message: str) -> None:
    # Celery sets up logging only once the worker starts; this line comes before, on stderr.
    if level >= logging.INFO:
        print(f"embedq worker: {message}", file=sys.stderr, flush=True)


class DeferredPolicyCheck(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """The policy check of a broker that was down when the worker started: once, when Celery connects.

    An evicting broker then ends the worker with exit code 2 (SystemExit reaches Celery's worker,
    which stops with that code).
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    allow_evicting: ClassVar[bool] = False
    done: ClassVar[bool] = False

    def start(self, consumer: Any) -> None:
        """Check the policy on the first connection."""
        if type(self).done:
            return
        app = consumer.app
        shown = redact_url(str(app.conf.broker_url))
        try:
            checked = check_broker_policy(
                lambda: broker_client(app), shown, allow_evicting=self.allow_evicting, unreachable_ok=True
            )
        except ConfigError as exc:
            logger.critical("embedq: error: %s", exc)
            raise SystemExit(EXIT_PERMANENT) from None
        type(self).done = checked


def check_broker_at_start(app: Celery, settings: Settings) -> None:
    """Refuse a broker that evicts queued work or refuses the credentials (ConfigError); note the rest.

    A broker that cannot be reached yet is left to Celery, which waits for it; the policy is then
    checked once, when the worker first connects.
    """
    shown = redact_url(str(app.conf.broker_url))
    checked = check_broker_policy(
        lambda: broker_client(app),
        shown,
        allow_evicting=settings.allow_evicting_broker,
        unreachable_ok=True,
        say=_say,
    )
    if not checked:
        attributes = {"allow_evicting": settings.allow_evicting_broker, "done": False}
        app.steps["consumer"].add(type("DeferredPolicyCheck", (DeferredPolicyCheck,), attributes))


FAR_BROKER_MS: Final = 0.5
"""A broker this far (fastest of a few PINGs) costs a worker that also serves queries bulk throughput."""
_PINGS: Final = 7


def broker_round_trip_ms(
    open_client: Callable[[], AbstractContextManager[Any]], pings: int = _PINGS
) -> float:
    """Return the fastest of ``pings`` PING round trips to the broker in ms.

    The fastest, not the median: CPU load only ever adds to a round trip (on a busy machine the
    median PING to a local broker reached 0.6 ms), while the distance is in every one.
    """
    samples = []
    with open_client() as client:
        client.ping()  # the connection itself is not part of a round trip
        for _ in range(pings):
            start = time.perf_counter()
            client.ping()
            samples.append((time.perf_counter() - start) * 1000)
    return min(samples)


def _serves_both(queues: Sequence[str], bulk_queue: str) -> bool:
    """Whether a worker reading ``queues`` serves bulk work and something else (queries)."""
    return bulk_queue in queues and list(queues) != [bulk_queue]


def far_broker_note(round_trip_ms: float, queues: Sequence[str], bulk_queue: str) -> str | None:
    """Return the note for a worker serving queries and bulk work ``round_trip_ms`` from its broker, or None.

    A worker that also reads the queue of queries reserves one task per pool process (so that a
    query never waits behind a reserved chunk): after each bulk task, its pool process waits for
    the ack, the next fetch and their bookkeeping, about five round trips. A bulk-only worker
    reserves the next chunk ahead and hides them (docs/SCALING.md, "Workers far from the broker").
    """
    if round_trip_ms < FAR_BROKER_MS or not _serves_both(queues, bulk_queue):
        return None
    return (
        f"the broker is {round_trip_ms:.1f} ms away (fastest of {_PINGS} PINGs). This worker also serves "
        f"queries, so it reserves one task per pool process and each bulk task waits about "
        f"{5 * round_trip_ms:.0f} ms of round trips for the next (at 1 ms, bulk jobs of 1000-text tasks ran "
        "at 0.86-0.96x the docs/s of a near worker). For bulk work on far hosts, run workers with --queues "
        "bulk: they reserve the next chunk ahead (docs/SCALING.md)"
    )


def note_broker_distance(app: Celery, bulk_queue: str, say: Callable[[int, str], None] = logger.log) -> None:
    """Measure the broker's round trip and say so when it slows this worker's bulk work."""
    queues = [queue.name for queue in app.conf.task_queues or ()]
    if not _serves_both(queues, bulk_queue):
        return  # no PINGs for a worker the note never concerns
    try:
        round_trip_ms = broker_round_trip_ms(lambda: broker_client(app))
    except (EmbedqError, RedisError, OSError):
        return  # not reachable: Celery reconnects, and the distance is not known
    note = far_broker_note(round_trip_ms, queues, bulk_queue)
    if note is not None:
        say(logging.WARNING, f"embedq: {note}")


class BrokerDistanceNote(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery ships no type hints
    """Once the worker is connected and its logging set up (plain or JSON), time the broker (above)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    bulk_queue: ClassVar[str] = ""
    done: ClassVar[bool] = False

    def start(self, consumer: Any) -> None:
        """Say it on the first connection only."""
        if type(self).done:
            return
        type(self).done = True
        note_broker_distance(consumer.app, self.bulk_queue)
