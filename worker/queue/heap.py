"""Keeps the collector's full passes off a worker's long-lived heap.

A worker's heap is mostly what it built at start: the imported modules, the Celery app, the
model's metadata. Python's full (generation 2) collection walks every tracked object, so in a
pool process it took 50-80 ms, once every few seconds under load, and the batch being encoded
waited for it (bench/bench_batching.py: a whole batch of 128 queries answered 50-100 ms late,
about one batch a round). :func:`freeze_heap` moves what exists to the collector's permanent
generation, which full passes skip; objects made later are collected as before. It also keeps
forked pool processes from writing to the parent's pages when they collect (the ``gc.freeze``
documentation's copy-on-write advice).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from celery import signals


def freeze_heap() -> None:
    """Collect what is garbage now, then freeze every object left (the collector skips them)."""
    gc.collect()
    gc.freeze()


def freeze_at_start() -> Callable[[], None]:
    """Freeze the heap at each start step; return what disconnects the hooks (it leaves the freezes).

    The steps: the parent before the pool forks, each pool process once set up, and the parent
    once it consumes.
    """

    def freeze(**_: Any) -> None:
        freeze_heap()

    hooks = (signals.worker_init, signals.worker_process_init, signals.worker_ready)
    for hook in hooks:
        hook.connect(freeze, weak=False)

    def disconnect() -> None:
        for hook in hooks:
            hook.disconnect(freeze)

    return disconnect
