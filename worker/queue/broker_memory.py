"""A broker that is out of memory is back-pressure for a worker, not a reason to stop.

Under ``maxmemory-policy noeviction`` with memory full, Redis refuses every command that may grow
memory. kombu takes a task with BRPOP (allowed) and then records it as unacknowledged with ZADD
and HSET (refused): Celery 5.7 called that error unrecoverable and the worker stopped, with the
task taken off its queue. Here the worker keeps the task and waits until Redis accepts the
record, then runs it; nothing is lost unless the worker is told to stop while Redis is still full.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from celery.worker import state as worker_state
from redis.exceptions import ExecAbortError, OutOfMemoryError, ResponseError

logger = logging.getLogger(__name__)

FIRST_WAIT_S: Final = 0.1
MAX_WAIT_S: Final = 2.0
REPORT_EVERY_S: Final = 30.0


def is_out_of_memory(exc: BaseException) -> bool:
    """Tell whether a Redis error says the server refused a write because memory is full."""
    if isinstance(exc, OutOfMemoryError):
        return True
    if isinstance(exc, ExecAbortError | ResponseError):
        text = str(exc)
        return text.startswith("OOM") or "used memory > 'maxmemory'" in text
    return False


def _stopping() -> bool:
    return bool(worker_state.should_stop or worker_state.should_terminate)


def wait_while_out_of_memory(write: Callable[[], object], what: str) -> bool:
    """Call ``write`` until Redis accepts it; wait (backing off) while Redis is out of memory.

    Return True once written, False if the worker was told to stop first. Other errors propagate.
    """
    wait_s = FIRST_WAIT_S
    started = time.monotonic()
    reported = 0.0
    while True:
        try:
            write()
        except (OutOfMemoryError, ExecAbortError, ResponseError) as exc:
            if not is_out_of_memory(exc):
                raise
        else:
            if reported:
                logger.warning("the Redis broker accepts writes again: %s goes on", what)
            return True
        waited_s = time.monotonic() - started
        if not reported or waited_s - reported >= REPORT_EVERY_S:
            logger.warning(
                "the Redis broker is out of memory (maxmemory reached, %.0f s so far): %s waits until it "
                "accepts writes; raise maxmemory or let consumers drain the queues",
                waited_s,
                what,
            )
            reported = max(waited_s, 1e-9)
        if _stopping():
            return False
        time.sleep(wait_s)
        wait_s = min(wait_s * 2, MAX_WAIT_S)
