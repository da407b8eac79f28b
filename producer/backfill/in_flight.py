"""How many chunks a backfill keeps queued: a fixed number, or about two per live pool process.

With ``auto``, the limit follows the pools the live workers of the model's bulk queue advertise
(producer.protocol.fleet), re-read every few seconds, so a backfill fills a fleet that grows or
shrinks while it runs. Two chunks per pool process: one running, one waiting for the moment it
ends, so no process idles for a round trip to the broker between chunks. A worker with more
processes than CPUs gets one chunk per CPU: a second chunk would not wait there but run on an
idle extra process, and the chunks would take turns on the CPUs (slower per document than one
chunk per CPU in bench/bench_fleet.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final, Literal

from producer.errors import ConfigError
from producer.protocol.fleet import PoolPresence

AUTO: Final = "auto"
InFlightSetting = int | Literal["auto"]

CHUNKS_PER_PROCESS: Final = 2
FALLBACK_IN_FLIGHT: Final = 4
"""The limit while no worker advertises its pool (none started yet, or all of an older version)."""
MAX_AUTO_IN_FLIGHT: Final = 1024
"""A ceiling on the auto limit: Redis holds at most this many chunks of one backfill at once."""
REREAD_EVERY_S: Final = 2.0


def parse_in_flight(raw: str) -> InFlightSetting:
    """Return ``auto`` or a positive whole number from a command-line value; else ConfigError."""
    text = raw.strip().lower()
    if text == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--max-in-flight must be 'auto' or a positive whole number, got {raw!r}")
    return value


def check_in_flight(value: object) -> InFlightSetting:
    """Return ``value`` if it is ``auto`` or a positive int; else ConfigError."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"max_in_flight must be 'auto' or a positive whole number, got {value!r}")
    return value


def worker_chunks(pool: PoolPresence) -> int:
    """Return the chunks to keep in flight for one worker: two per process, one per CPU if oversubscribed."""
    if pool.cpus is not None and pool.processes > pool.cpus:
        return pool.cpus
    return CHUNKS_PER_PROCESS * pool.processes


def auto_limit(pools: Sequence[PoolPresence]) -> int:
    """Return the auto limit for the live workers' ``pools`` (none advertised: a fixed fallback)."""
    if not pools:
        return FALLBACK_IN_FLIGHT
    return min(MAX_AUTO_IN_FLIGHT, sum(worker_chunks(pool) for pool in pools))


class InFlightLimit:
    """The current limit on chunks in flight; with ``auto``, re-read from the broker every few seconds."""

    def __init__(
        self,
        setting: InFlightSetting,
        read_pools: Callable[[], Sequence[PoolPresence]],
        *,
        reread_every_s: float = REREAD_EVERY_S,
    ) -> None:
        self.setting = check_in_flight(setting)
        self._read = read_pools
        self._reread_every_s = reread_every_s
        self._value = setting if isinstance(setting, int) else FALLBACK_IN_FLIGHT
        self._pool_processes = 0
        self._read_at: float | None = None

    @property
    def pool_processes(self) -> int:
        """The runnable pool processes last read (0 before the first read or with a fixed setting)."""
        return self._pool_processes

    def current(self) -> int:
        """Return the limit now (reads the broker at most every ``reread_every_s`` with ``auto``)."""
        if self.setting != AUTO:
            return self._value
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self._reread_every_s:
            self._read_at = now
            pools = self._read()
            self._pool_processes = sum(pool.runnable for pool in pools)
            self._value = auto_limit(pools)
        return self._value
