"""How a request is cut into tasks: consecutive parts within the per-task limits, sized for the pool."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate


def split_batches(texts: Sequence[str], max_texts: int, max_chars: int) -> list[Sequence[str]]:
    """Cut ``texts`` into consecutive batches of at most ``max_texts`` texts and about ``max_chars`` chars.

    A batch always holds at least one text, so a single text longer than ``max_chars`` is its own batch.
    """
    batches: list[Sequence[str]] = []
    ends = list(accumulate(map(len, texts)))  # ends[i]: characters in texts[: i + 1]
    start = 0
    while start < len(texts):
        before = ends[start - 1] if start else 0
        stop = bisect_right(ends, before + max_chars, start, min(start + max_texts, len(texts)))
        stop = max(stop, start + 1)
        batches.append(texts[start:stop])
        start = stop
    return batches


def task_count(count: int, max_texts: int, processes: int) -> int:
    """Return how many tasks a job of ``count`` texts is split into (at most ``max_texts`` each).

    With ``processes`` live pool processes serving it (0: unknown), the count is rounded up to a
    multiple of them, so that equal parts end together instead of one process running the last
    part alone; unless that more than doubles it (a small job on a big fleet keeps its few tasks).
    """
    tasks = -(-count // max_texts)
    if tasks > 1 and processes > 1:
        rounded = -(-tasks // processes) * processes
        if rounded <= 2 * tasks:
            tasks = rounded
    return tasks


def split_even(texts: Sequence[str], tasks: int, max_chars: int) -> list[Sequence[str]]:
    """Cut ``texts`` into ``tasks`` consecutive parts whose sizes differ by one at most.

    A part over ``max_chars`` characters is cut further (see :func:`split_batches`).
    """
    base, extra = divmod(len(texts), tasks)
    parts: list[Sequence[str]] = []
    start = 0
    for index in range(tasks):
        stop = start + base + (index < extra)
        if stop > start:
            parts.extend(split_batches(texts[start:stop], stop - start, max_chars))
        start = stop
    return parts
