"""One run at a time per backfill job: a lock in Redis, next to the job's confirmed chunks.

Two runs of the same backfill at once both sent every chunk (each read the same checkpoint). The
first run holds ``embedq:backfill:<job>:lock`` (its host, pid and start time), refreshing it
while it runs; a second run is refused with who holds it. A run that dies leaves the lock to
expire within ``LOCK_TTL_S``.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any, Final

from producer.errors import TransientError

LOCK_TTL_S: Final = 30
_IF_HELD = "if redis.call('get', KEYS[1]) == ARGV[1] then return "
_REFRESH = _IF_HELD + "redis.call('expire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = _IF_HELD + "redis.call('del', KEYS[1]) end return 0"


class BackfillRunningError(TransientError):
    """Another run of the same backfill job is going on; wait for it to end, or stop it first."""


def lock_key(job_id: str) -> str:
    """Return the Redis key of a backfill job's run lock."""
    return f"embedq:backfill:{job_id}:lock"


def holder_name() -> str:
    """Name this run for the lock: host, pid and start time (UTC)."""
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{socket.gethostname()} pid {os.getpid()} since {started}"


def acquire(redis: Any, job_id: str, holder: str) -> None:
    """Take the job's run lock for ``holder``, or raise BackfillRunningError naming who holds it."""
    if redis.set(lock_key(job_id), holder, nx=True, ex=LOCK_TTL_S):
        return
    current = redis.get(lock_key(job_id))
    shown = current.decode(errors="replace") if isinstance(current, bytes) else str(current)
    raise BackfillRunningError(
        f"backfill {job_id} is already running ({shown}): wait for it to end, or stop it; "
        f"a run that died frees it within {LOCK_TTL_S} s"
    )


def refresh(redis: Any, job_id: str, holder: str) -> bool:
    """Extend the lock if ``holder`` still has it; return whether it does."""
    return bool(redis.eval(_REFRESH, 1, lock_key(job_id), holder, LOCK_TTL_S))


def release(redis: Any, job_id: str, holder: str) -> None:
    """Free the lock if ``holder`` still has it."""
    redis.eval(_RELEASE, 1, lock_key(job_id), holder)
