"""The worker freezes its start-up heap at the three start signals, and collection goes on after."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from celery import signals

from worker.queue.heap import freeze_at_start


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite runs with an ordinary heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("hook", [signals.worker_init, signals.worker_process_init, signals.worker_ready])
def test_each_start_signal_freezes_the_heap(unfrozen: None, hook: signals.Signal) -> None:
    undo = freeze_at_start()
    try:
        assert gc.get_freeze_count() == 0
        hook.send(sender=None)
        assert gc.get_freeze_count() > 1000  # the modules and objects this test process holds
    finally:
        undo()


def test_garbage_at_freeze_time_is_collected_first_and_later_garbage_still_is(unfrozen: None) -> None:
    undo = freeze_at_start()
    try:
        before = _Cycle()
        gone_before = weakref.ref(before)
        del before  # an unreachable cycle: only the collector frees it
        signals.worker_process_init.send(sender=None)
        assert gone_before() is None  # collected, not frozen for good
        after = _Cycle()
        gone_after = weakref.ref(after)
        del after
        gc.collect()
        assert gone_after() is None
    finally:
        undo()


def test_undo_disconnects_every_hook(unfrozen: None) -> None:
    freeze_at_start()()
    for hook in (signals.worker_init, signals.worker_process_init, signals.worker_ready):
        hook.send(sender=None)
    assert gc.get_freeze_count() == 0
