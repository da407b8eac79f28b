"""What each worker advertises about its pool, so producers can size their backpressure to the fleet.

Next to the one shared presence key per queue (``names.presence_key``, read by every embedq
version), each worker keeps a key of its own, ``pool_key(queue, hostname)``, holding a
:class:`PoolPresence` with the TTL of the presence key, and adds its hostname to the set
``pool_set_key(queue)``. A producer sums the pool processes of the hostnames whose key is still
alive. Workers of an older version write no pool key: a producer then sees no pool and falls back
to a fixed number. The record is decoded leniently (unknown keys are ignored), so a later version
may add fields without breaking this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import msgpack

from producer.errors import MessageDecodeError

_POOL_PREFIX = "embedq:pool:"


def pool_set_key(queue: str) -> str:
    """Return the broker key of the set of worker hostnames that advertised a pool on ``queue``."""
    return f"{_POOL_PREFIX}{queue}"


def pool_key(queue: str, hostname: str) -> str:
    """Return the broker key a live worker ``hostname`` consuming ``queue`` keeps set (short TTL)."""
    return f"{_POOL_PREFIX}{queue}:{hostname}"


@dataclass(frozen=True)
class PoolPresence:
    """One worker's pool: its name (Celery hostname/pid), its processes, the CPUs it may use, its model."""

    hostname: str
    processes: int
    cpus: int | None = None  # None: not said (a record of an earlier version)
    fingerprint: str | None = None
    """The fingerprint of the model files the worker loaded (None: a worker of an earlier version)."""
    started_at: float | None = None
    """When the worker started (epoch s): of two serving other files under one name, the later stops."""

    @property
    def runnable(self) -> int:
        """Pool processes that can run at once: no more than the CPUs (more only take turns)."""
        return self.processes if self.cpus is None else min(self.processes, self.cpus)

    def encode(self) -> bytes:
        """Return the msgpack bytes stored under :func:`pool_key`."""
        fields = {
            "hostname": self.hostname,
            "processes": self.processes,
            "cpus": self.cpus,
            "fingerprint": self.fingerprint,
            "started_at": self.started_at,
        }
        return cast(bytes, msgpack.packb({key: value for key, value in fields.items() if value is not None}))

    @classmethod
    def decode(cls, raw: bytes) -> PoolPresence:
        """Rebuild a pool record; raise MessageDecodeError if malformed (extra keys are ignored)."""
        try:
            payload: Any = msgpack.unpackb(raw, raw=False)
        except (ValueError, TypeError) as exc:
            raise MessageDecodeError(f"PoolPresence is not valid msgpack: {exc}") from exc
        if not isinstance(payload, dict):
            raise MessageDecodeError(f"PoolPresence must be a map, got {type(payload).__name__}")
        hostname, processes, cpus = payload.get("hostname"), payload.get("processes"), payload.get("cpus")
        if not isinstance(hostname, str) or not hostname:
            raise MessageDecodeError("PoolPresence.hostname must be a non-empty string")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise MessageDecodeError(f"PoolPresence.processes must be a positive int, got {processes!r}")
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
            raise MessageDecodeError(f"PoolPresence.cpus must be a positive int, got {cpus!r}")
        fingerprint = payload.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise MessageDecodeError(
                f"PoolPresence.fingerprint must be a string, got {type(fingerprint).__name__}"
            )
        started_at = payload.get("started_at")
        if started_at is not None and (
            isinstance(started_at, bool) or not isinstance(started_at, int | float)
        ):
            raise MessageDecodeError(
                f"PoolPresence.started_at must be a number, got {type(started_at).__name__}"
            )
        return cls(hostname, processes, cpus, fingerprint, None if started_at is None else float(started_at))


def live_pools(redis: Any, queue: str) -> list[PoolPresence]:
    """Return the pool records of the live workers advertising a pool on ``queue``.

    Hostnames whose key expired (the worker stopped or lost the broker) are dropped from the set;
    foreign values are skipped.
    """
    members = redis.smembers(pool_set_key(queue))
    hostnames = sorted(name.decode() if isinstance(name, bytes) else str(name) for name in members)
    if not hostnames:
        return []
    values: list[bytes | None] = redis.mget([pool_key(queue, name) for name in hostnames])
    pools = []
    gone = []
    for name, raw in zip(hostnames, values, strict=True):
        if raw is None:
            gone.append(name)
            continue
        try:
            pools.append(PoolPresence.decode(raw))
        except MessageDecodeError:
            continue  # a foreign value: not a pool this producer can count
    if gone:
        redis.srem(pool_set_key(queue), *gone)
    return pools


def live_pool_processes(redis: Any, queue: str) -> int:
    """Return the runnable pool processes of the live workers advertising a pool on ``queue`` (0: none)."""
    return sum(pool.runnable for pool in live_pools(redis, queue))
