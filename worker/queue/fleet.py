"""A worker's pool record (producer.protocol.fleet): written next to its presence key, same TTL.

The record carries the fingerprint of the worker's model files, so a worker refuses to start on a
queue whose live workers serve other files under the same model name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from producer.errors import ModelMismatchError
from producer.protocol.fleet import PoolPresence, live_pools, pool_key, pool_set_key
from producer.protocol.names import PRESENCE_TTL_S, short_fingerprint


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


def withdraw_pool(redis: Any, queues: Sequence[str], hostname: str) -> None:
    """Delete the worker's pool key on each of ``queues`` (it stops), so a successor need not wait."""
    pipe = redis.pipeline()
    for queue in queues:
        pipe.delete(pool_key(queue, hostname))
        pipe.srem(pool_set_key(queue), hostname)
    pipe.execute()


def other_models(
    redis: Any, queues: Sequence[str], fingerprint: str, own_hostname: str | None = None
) -> dict[str, PoolPresence]:
    """Return the live workers on ``queues`` whose model files differ from ``fingerprint``, by pool key.

    Workers of an earlier version (no fingerprint advertised) are not counted: they cannot be told apart.
    """
    return {
        pool_key(queue, pool.hostname): pool
        for queue in queues
        for pool in live_pools(redis, queue)
        if pool.fingerprint and pool.fingerprint != fingerprint and pool.hostname != own_hostname
    }


def started_later(others: dict[str, PoolPresence], started_at: float, hostname: str) -> bool:
    """Whether this worker started after one of ``others`` (ties: by hostname): then it is the one to stop."""
    return any((pool.started_at or 0.0, pool.hostname) < (started_at, hostname) for pool in others.values())


def describe_pools(pools: dict[str, PoolPresence]) -> str:
    """Return the workers as named in messages: hostname and short fingerprint."""
    names = {
        f"{pool.hostname} (fingerprint {short_fingerprint(pool.fingerprint)})" for pool in pools.values()
    }
    return ", ".join(sorted(names))


def check_fleet_model(
    redis: Any,
    queues: Sequence[str],
    model_id: str,
    fingerprint: str,
    *,
    wait_s: float = PRESENCE_TTL_S + 1.0,
    poll_s: float = 0.2,
) -> None:
    """Refuse to start beside live workers that serve other files under the same model name.

    A worker stopped just now leaves its pool key for up to the presence TTL. A live worker resets
    its key's TTL every third of it, a stopped one does not: the check refuses as soon as one of
    the keys is seen refreshed, and starts if they all expire (``wait_s`` at most).
    """
    deadline = time.monotonic() + wait_s
    others = other_models(redis, queues, fingerprint)
    remaining_ms = {key: int(redis.pttl(key)) for key in others}
    while others:
        refreshed = any(int(redis.pttl(key)) > remaining_ms[key] for key in others)
        if refreshed or time.monotonic() >= deadline:
            raise ModelMismatchError(
                f"other workers on queue {queues[0]} serve a model named {model_id!r} from other files: "
                f"{describe_pools(others)}; this worker's model {model_id!r} has fingerprint "
                f"{short_fingerprint(fingerprint)}. One queue must serve one model, or a query could be "
                "answered with either's vectors: use the same model files on every worker of this "
                "queue (stop the others before switching), or give this model its own name"
            )
        time.sleep(poll_s)
        others = other_models(redis, queues, fingerprint)
        remaining_ms = {key: min(remaining_ms.get(key, 1 << 62), int(redis.pttl(key))) for key in others}
