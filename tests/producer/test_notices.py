"""Request notices and the event-loop waker: completion from other threads, timeouts, few wakeups."""

from __future__ import annotations

import asyncio
import threading

import pytest

from producer.job import LoopWaker, TaskOutcome, await_future
from producer.notice import Notice


def test_a_notice_completes_once_for_threads_and_callbacks() -> None:
    notice = Notice()
    seen: list[Notice] = []
    notice.add_done_callback(seen.append)
    with pytest.raises(TimeoutError):
        notice.result(timeout=0.01)
    waiter = threading.Thread(target=lambda: seen.append(notice.result(timeout=5)))  # type: ignore[arg-type]
    waiter.start()
    notice.set_result(TaskOutcome("done", value=1))
    notice.set_exception(RuntimeError("ignored: already complete"))
    waiter.join(5)
    assert notice.done() and notice.result().value == 1
    assert seen[0] is notice and len(seen) == 2
    late: list[Notice] = []
    notice.add_done_callback(late.append)  # already complete: called at once
    assert late == [notice]
    failed = Notice()
    failed.set_exception(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        failed.result()


def test_many_notices_completed_together_wake_the_loop_once_and_keep_their_own_outcomes() -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counted(*args: object) -> object:
            nonlocal wakeups
            wakeups += 1
            return original(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        notices = [Notice() for _ in range(200)]
        waiting = [asyncio.ensure_future(await_future(notice, 30)) for notice in notices]
        await asyncio.sleep(0.01)  # every task waits
        ready = threading.Event()

        def complete() -> None:
            ready.wait(5)
            for number, notice in enumerate(notices):
                notice.set_result(TaskOutcome("done", value=number))

        thread = threading.Thread(target=complete)
        thread.start()
        ready.set()
        outcomes = await asyncio.gather(*waiting)
        thread.join(5)
        return [outcome.value for outcome in outcomes], wakeups

    values, wakeups = asyncio.run(main())
    assert values == list(range(200))
    assert 1 <= wakeups < 20  # one per burst the loop drains, not one per request


def test_waiters_time_out_in_order_answered_ones_do_not_and_an_earlier_deadline_gets_its_own_timer() -> None:
    async def main() -> None:
        waker = LoopWaker.of(asyncio.get_running_loop())
        slow, answered, late = Notice(), Notice(), Notice()
        first = asyncio.ensure_future(await_future(slow, 0.5))
        second = asyncio.ensure_future(await_future(answered, 0.5))
        third = asyncio.ensure_future(await_future(late, 5.0))
        early = asyncio.ensure_future(await_future(Notice(), 0.02))  # before the tail's deadline
        await asyncio.sleep(0)
        answered.set_result(TaskOutcome("done", value="kept"))
        with pytest.raises(TimeoutError):
            await early
        assert not first.done()
        with pytest.raises(TimeoutError):
            await first
        assert (await second).value == "kept"
        assert not third.done()
        late.set_result(TaskOutcome("done", value="late"))
        assert (await third).value == "late"
        again = await_future(slow, 1.0)  # a timed-out notice can be awaited again
        slow.set_result(TaskOutcome("done", value="again"))
        assert (await again).value == "again"
        assert not waker._deadlines or all(entry[1].done() for entry in waker._deadlines)

    asyncio.run(main())
