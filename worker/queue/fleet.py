"""A worker's pool record (producer.protocol.fleet): written next to its presence key, same TTL."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from producer.protocol.fleet import PoolPresence, pool_key, pool_set_key
from producer.protocol.names import PRESENCE_TTL_S


def pool_identity(consumer: Any) -> str:
    """Return this worker's name in the pool set: its hostname and pid (two workers may share a name)."""
    return f"{consumer.hostname}/{os.getpid()}"


def pool_processes(consumer: Any) -> int:
    """Return how many processes of this worker's pool run tasks now (autoscale changes it)."""
    pool = getattr(consumer, "pool", None)
    for name in ("num_processes", "limit"):
        value = getattr(pool, name, None)
        if isinstance(value, int) and value > 0:
            return value
    concurrency = consumer.app.conf.worker_concurrency
    return concurrency if isinstance(concurrency, int) and concurrency > 0 else 1


def usable_cpus() -> int:
    """Return the CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def advertise_pool(redis: Any, queues: Sequence[str], presence: PoolPresence) -> None:
    """Set the worker's pool key on each of ``queues`` (TTL of the presence key) and list its hostname."""
    pipe = redis.pipeline()
    for queue in queues:
        # The key first: a producer that sees the hostname in the set and no key drops it.
        pipe.set(pool_key(queue, presence.hostname), presence.encode(), ex=PRESENCE_TTL_S)
        pipe.sadd(pool_set_key(queue), presence.hostname)
    pipe.execute()
