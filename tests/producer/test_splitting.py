from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from producer.splitting import split_batches, split_even, task_count


@given(
    texts=st.lists(st.text(max_size=30), max_size=40),
    max_texts=st.integers(1, 10),
    max_chars=st.integers(1, 60),
)
def test_split_batches_keeps_order_and_limits(texts: list[str], max_texts: int, max_chars: int) -> None:
    batches = split_batches(texts, max_texts, max_chars)
    assert [text for batch in batches for text in batch] == texts
    for batch in batches:
        assert 1 <= len(batch) <= max_texts
        assert len(batch) == 1 or sum(map(len, batch)) <= max_chars


@given(
    texts=st.lists(st.text(max_size=30), min_size=1, max_size=60),
    tasks=st.integers(1, 12),
    max_chars=st.integers(1, 400),
)
def test_split_even_keeps_order_and_cuts_parts_that_differ_by_one(
    texts: list[str], tasks: int, max_chars: int
) -> None:
    parts = split_even(texts, tasks, max_chars)
    assert [text for part in parts for text in part] == texts
    for part in parts:
        assert len(part) >= 1 and (len(part) == 1 or sum(map(len, part)) <= max_chars)
    if max_chars >= sum(map(len, texts)):  # nothing cut for size: the parts are the equal ones
        sizes = [len(part) for part in parts]
        assert len(parts) == min(tasks, len(texts)) and max(sizes) - min(sizes) <= 1


def test_task_count_rounds_up_to_a_multiple_of_the_live_pool_unless_that_more_than_doubles_it() -> None:
    assert task_count(100_000, 4096, 0) == 25  # pool unknown: as few tasks as the limit allows
    assert task_count(100_000, 4096, 2) == 26
    assert task_count(100_000, 4096, 8) == 32
    assert task_count(5000, 4096, 8) == 2  # 8 would be 4x: a small job keeps its few tasks
    assert task_count(4096, 4096, 8) == 1
